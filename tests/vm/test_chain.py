"""A real 3-VM chain a - m - b: traffic from a to b across two hops, m forwarding in its
kernel, byte-exact with the kernel's stack and with ours (mono, factored) at both ends."""

from __future__ import annotations

import re

import pytest

from host.accel import accel_for
from host.config import load_lab
from host.lab import Lab
from host.paths import PROJECT_ROOT
from tests.vm.conftest import unique_lab_name
from tests.vm.streams import checked_stream

CHAIN_CONFIG = PROJECT_ROOT / "configs" / "chain.yaml"
STREAM_BYTES = 2 * 1_000_003 + 777  # a few MB at most: the test boots three TCG guests


@pytest.fixture(scope="module")
def chain():
    config = load_lab(CHAIN_CONFIG)
    with Lab(config, accel=accel_for(config.image), name=unique_lab_name("tc")) as lab:
        lab.up()
        yield lab


def _addr(lab, link: str, node: str) -> str:
    return str(lab.config.link(link).address_of(node))


def _forwarded(lab) -> int:
    """m's count of forwarded datagrams (Ip: ForwDatagrams in /proc/net/snmp)."""
    text = lab.guest("m").run("cat /proc/net/snmp").check().stdout
    names, values = [line.split() for line in text.splitlines() if line.startswith("Ip:")][:2]
    return int(values[names.index("ForwDatagrams")])


def test_bring_up_routed_a_and_b_through_m(chain):
    nodes = {n.name: n for n in chain.state.nodes}
    assert [n.name for n in chain.state.nodes if n.forwarding] == ["m"]
    assert nodes["a"].routes == [
        {"subnet": "198.18.2.0/24", "via": "198.18.1.2", "link": "a-m", "dev": "eth1"}
    ]
    assert "198.18.2.0/24 via 198.18.1.2 dev eth1" in chain.guest("a").run("ip route").stdout
    assert chain.guest("m").run("sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"


def test_ping_from_a_to_b_across_two_hops(chain):
    b = _addr(chain, "m-b", "b").split("/")[0]
    r = chain.guest("a").run(f"ping -c 3 -i 0.2 -W 2 {b}")
    assert r.exit_status == 0, r.stdout
    assert " 0% packet loss" in r.stdout
    assert re.search(r"ttl=63", r.stdout), r.stdout  # one router decremented the TTL


@pytest.mark.parametrize("path", ["kernel", "mono", "factored"])
def test_stream_from_a_to_b_is_byte_exact_through_m(chain, path):
    b = _addr(chain, "m-b", "b")
    port = {"kernel": 6201, "mono": 6202, "factored": 6203}[path]
    if path == "kernel":
        client = server = "--path kernel"
    else:
        a = _addr(chain, "a-m", "a")
        client = f"--path {path} --iface eth1 --addr {a} --stack-gateway 198.18.1.2"
        server = f"--path {path} --iface eth1 --addr {b} --stack-gateway 198.18.2.1"
    ip_b = b.split("/")[0]
    before = _forwarded(chain)
    source, received = checked_stream(
        chain.guest("a"),
        chain.guest("b"),
        ip_b,
        port,
        STREAM_BYTES,
        seed=9,
        source_args=client,
        sink_args=server,
    )
    forwarded = _forwarded(chain) - before
    assert source["path"] == received["path"] == path
    # m forwarded the data one way and the ACKs the other. Its GRO merges received segments
    # into datagrams of up to 64 KiB, which ForwDatagrams counts once each: so at least one
    # per 64 KiB of data.
    assert forwarded >= STREAM_BYTES // 65536, forwarded

"""A real 2-VM lab whose link is impaired with netem: set at bring-up, replaced for a run
and restored by the code the bench uses (host.bench.impaired), seen in ping's round trips
and survived byte-exact by the kernel's stack and ours."""

from __future__ import annotations

import re

import pytest

from host.accel import accel_for
from host.bench import impaired, run_experiments
from host.config import parse_lab
from host.lab import Lab
from tests.vm.conftest import unique_lab_name
from tests.vm.streams import checked_stream

LAB = """
lab: impair
nodes: [{name: a}, {name: b}]
links:
  - endpoints: [a, b]
    impair: {delay: 10ms}
experiments:
  # Run through run_experiments: its override in place of the link's 10 ms, then restored.
  - name: ping-slower
    type: ping
    client: a
    server: b
    duration_s: 1
    impair: {a-b: {delay: 20ms}}
  # Never run: the tests switch the link with these through host.bench.impaired.
  - name: clear
    type: ping
    client: a
    server: b
    impair: {a-b: {}}
  - name: lossy
    type: stream
    client: a
    server: b
    impair: {a-b: {loss: 2%}}
  # Linux's own TCP lost far fewer frames to netem than it was told to in the guest's kernel
  # (Debian's 6.1.0-57: 0 to 14 of ~1400 frames at 2 %, when ping lost 2 %): more for it.
  - name: lossier
    type: stream
    client: a
    server: b
    impair: {a-b: {loss: 10%}}
"""

STREAM_BYTES = 2 * 1_000_003 + 555


@pytest.fixture(scope="module")
def lab():
    config = parse_lab(LAB, "impair.yaml")
    with Lab(config, accel=accel_for(config.image), name=unique_lab_name("ti")) as lab:
        lab.up()
        yield lab


def _rtt_ms(lab) -> tuple[float, float]:
    """Minimum and average round trip from a to b, in ms."""
    out = lab.guest("a").run("ping -q -c 5 -i 0.2 -W 2 198.18.1.2").check().stdout
    found = re.search(r"= ([\d.]+)/([\d.]+)/", out)
    assert found, out
    return float(found[1]), float(found[2])


def _kernel_retransmits(guest) -> int:
    """The guest kernel's retransmitted TCP segments (Tcp: RetransSegs in /proc/net/snmp)."""
    text = guest.run("cat /proc/net/snmp").check().stdout
    names, values = [line.split() for line in text.splitlines() if line.startswith("Tcp:")][:2]
    return int(values[names.index("RetransSegs")])


def _netem(lab, node: str) -> str:
    return lab.guest(node).run("tc qdisc show dev eth1").check().stdout


def test_bring_up_delays_each_direction_by_10ms(lab):
    for node in lab.state.nodes:
        assert node.impairments == [{"link": "a-b", "dev": "eth1", "delay": "10ms"}]
        assert "netem" in _netem(lab, node.name) and "delay 10ms" in _netem(lab, node.name)
    low, _avg = _rtt_ms(lab)
    assert low >= 20.0


def test_without_the_delay_the_round_trip_is_shorter(lab):
    with impaired(lab.config, lab.state, lab.guest, lab.config.experiment("clear")):
        assert "netem" not in _netem(lab, "a")
        _low, avg = _rtt_ms(lab)
        assert avg < 20.0
    assert "delay 10ms" in _netem(lab, "a")  # the lab's own, restored


def test_an_experiments_override_is_recorded_and_undone(lab):
    [record] = run_experiments(lab.config, lab.state, lab.guest, only=["ping-slower"])
    assert not record["errors"], record["errors"]
    assert record["impairments"] == {"a-b": {"a": {"delay": "20ms"}, "b": {"delay": "20ms"}}}
    assert record["summary"]["rtt_min_us"] >= 40_000
    assert "delay 10ms" in _netem(lab, "a") and "delay 10ms" in _netem(lab, "b")


@pytest.mark.parametrize("path", ["kernel", "mono", "factored"])
def test_stream_over_2_percent_loss_is_byte_exact_and_retransmits(lab, path):
    a, b = lab.guest("a"), lab.guest("b")
    port = {"kernel": 6301, "mono": 6302, "factored": 6303}[path]
    # netem tosses one coin per skb: senders hand it MTU-sized frames (Linux: no TSO/GSO;
    # our stack: every lever but TSO), so 2 % is 2 % of the frames (see test_lab.py).
    if path == "kernel":
        client = server = "--path kernel"
    else:
        client = f"--path {path} --iface eth1 --addr 198.18.1.1/24 --stack-offload csum,gro"
        server = f"--path {path} --iface eth1 --addr 198.18.1.2/24 --stack-offload csum,gro"
    a.run("ethtool -K eth1 tso off gso off").check()
    before = _kernel_retransmits(a)
    try:
        lossy = "lossier" if path == "kernel" else "lossy"
        with impaired(lab.config, lab.state, lab.guest, lab.config.experiment(lossy)):
            assert "loss " in _netem(lab, "a") and "delay" not in _netem(lab, "a")
            source, received = checked_stream(
                a,
                b,
                "198.18.1.2",
                port,
                STREAM_BYTES,
                seed=11,
                source_args=client,
                sink_args=server,
            )
    finally:
        a.run("ethtool -K eth1 tso on gso on")
    assert source["path"] == received["path"] == path
    if path == "kernel":
        retransmits = _kernel_retransmits(a) - before
    else:
        tcp = source["stack"]["stack"]
        retransmits = tcp.get("tcp.retransmits_fast", 0) + tcp.get("tcp.retransmits_timeout", 0)
    assert retransmits > 0

"""A real chain a - m - b with each forwarding mode on m: the stream from a to b byte-exact
through the socket and the splice proxy and through the stack proxy (mono and factored), each
proxy's relayed bytes equal to the stream's; through the forwarding extension, with m's kernel
forwarding nothing and ping passing too, and with m's NICs' offloads on, as super-frames;
through Debian's haproxy; and iperf3 (a control and a data connection) through the socket
proxy as the bench runs it."""

from __future__ import annotations

import pytest

from host.accel import accel_for
from host.bench import run_experiments, transit
from host.config import load_lab
from host.experiments import Target
from host.forwarding import FORWARD_MODES, forwarded
from host.lab import Lab
from host.paths import PROJECT_ROOT
from tests.vm.conftest import unique_lab_name
from tests.vm.streams import checked_stream

PROXY_CONFIG = PROJECT_ROOT / "configs" / "proxy.yaml"
STREAM_BYTES = 3 * 1_000_003 + 555  # a few MB: the test boots three TCG guests


@pytest.fixture(scope="module")
def chain():
    config = load_lab(PROXY_CONFIG)
    with Lab(config, accel=accel_for(config.image), name=unique_lab_name("tf")) as lab:
        lab.up()
        yield lab


@pytest.mark.parametrize("mode", ["socket-proxy", "splice-proxy"])
def test_stream_through_a_proxy_on_m_is_byte_exact_and_fully_relayed(chain, mode):
    config = chain.config
    exp = config.experiment(f"{mode}-stream")
    path = config.path_of(exp)
    port = {"socket-proxy": 6301, "splice-proxy": 6302}[mode]
    b = str(config.link("m-b").address_of("b").ip)
    target = Target(exp, chain.guest("a"), chain.guest("b"), b, port)
    with forwarded(
        FORWARD_MODES[mode], transit(config, chain.state, chain.guest, path, target)
    ) as run:
        assert run.entry == str(config.link("a-m").address_of("m").ip)  # a talks to m
        checked_stream(
            chain.guest("a"), chain.guest("b"), b, port, STREAM_BYTES, seed=5, peer=run.entry
        )
    ((node, m),) = run.middles.items()
    assert node == "m"
    stats = m["proxy"]["stats"]
    assert stats["client_to_server"]["bytes"] == STREAM_BYTES
    assert stats["connections"]["accepted"] == 1 and stats["connections"]["failed"] == 0
    assert stats["fds_leaked"] == 0
    assert m["relayed_bytes"] == STREAM_BYTES and m["syscalls_per_mb"] > 0
    assert m["cpu"] is not None and 0 < m["cpu"] <= 1
    if mode == "splice-proxy":
        assert m["user_copy_bytes"] == 0
    else:
        assert m["user_copy_bytes"] == STREAM_BYTES


def test_iperf3_through_the_socket_proxy_as_the_bench_runs_it(chain):
    config = chain.config.model_copy(deep=True)
    for exp in config.experiments:
        exp.duration_s = 3
    (record,) = run_experiments(config, chain.state, chain.guest, ["socket-proxy-iperf3"])
    assert record["errors"] == [] and record["summary"]["mbit_per_s"] > 0
    assert record["forward"]["mode"] == "socket-proxy"
    (run,) = record["runs"]
    proxy = run["forward"]["m"]["proxy"]
    stats = proxy["stats"]
    # iperf3's control connection and its data connection, both relayed and both ended. The
    # iperf3 server closes the data connection while the client's last segments are still on
    # their way (unread: a reset), so the proxy's next write to it fails (EPIPE): the proxy
    # closes both sides and counts the connection as failed, the test itself is complete.
    conns = stats["connections"]
    assert conns["accepted"] == 2 and conns["completed"] + conns["failed"] == 2, stats
    assert conns["completed"] >= 1, stats  # the control connection at least
    failures = [e for e in proxy["events"] if e["event"] != "ready"]
    assert len(failures) == conns["failed"], proxy["events"]
    assert all(e["event"] == "connection_failed" for e in failures), failures
    assert stats["client_to_server"]["bytes"] > 1_000_000, stats
    assert record["forward"]["middles"]["m"]["relayed_bytes"] > 1_000_000


def _through(chain, mode: str, port: int):
    """The stream experiment's route with `mode` on m: (forwarded context, a, b, b's address)."""
    config = chain.config
    exp = config.experiment(f"{mode}-stream")
    b = str(config.link("m-b").address_of("b").ip)
    target = Target(exp, chain.guest("a"), chain.guest("b"), b, port)
    run = forwarded(
        FORWARD_MODES[mode], transit(config, chain.state, chain.guest, config.path_of(exp), target)
    )
    return run, chain.guest("a"), chain.guest("b"), b


@pytest.mark.parametrize("path", ["mono", "factored"])
def test_stream_through_a_proxy_on_our_own_stack_is_byte_exact_and_fully_relayed(chain, path):
    ctx, a, b, b_ip = _through(chain, f"stack-proxy-{path}", 6310 + len(path))
    with ctx as run:
        assert run.entry == str(chain.config.link("a-m").address_of("m").ip)
        checked_stream(a, b, b_ip, 6310 + len(path), STREAM_BYTES, seed=7, peer=run.entry)
    m = run.middles["m"]
    stats = m["proxy"]["stats"]
    assert stats["client_to_server"]["bytes"] == STREAM_BYTES, stats
    assert stats["connections"]["accepted"] == 1 and stats["connections"]["failed"] == 0
    assert m["relayed_bytes"] == STREAM_BYTES and m["relay_calls_per_mb"] > 0
    assert m["forwarded_packets"] == 0  # m's kernel routed nothing: our stacks terminated it
    if path == "factored":
        assert stats["relay"]["domain"]["confined"] is True, stats["relay"]


def test_stream_and_ping_through_the_extension_with_ms_kernel_out_of_the_way(chain):
    ctx, a, b, b_ip = _through(chain, "extension", 6320)
    with ctx as run:
        assert run.entry == b_ip  # a talks to b itself, routed through m
        checked_stream(a, b, b_ip, 6320, STREAM_BYTES, seed=9)
        ping = a.run(f"ping -c 3 -i 0.2 -W 5 {b_ip}", timeout=60)
        assert ping.exit_status == 0 and " 0% packet loss" in ping.stdout, ping.stdout
    m = run.middles["m"]
    ext = m["extension"]["extension"]
    assert m["kernel_forwarded_packets"] == 0, m  # the kernel saw none of it
    assert m["forwarded_packets"] > STREAM_BYTES // 1500, m  # data one way, ACKs the other
    assert m["relayed_bytes"] > STREAM_BYTES and ext["bad_checksum"] == 0
    assert m["extension"]["restarts"] == 0 and m["extension"]["per_frame"]["syscalls_per_frame"] < 1
    # Given back: m forwards in its kernel again, and a reaches b through it.
    again = a.run(f"ping -c 2 -i 0.2 -W 5 {b_ip}", timeout=60)
    assert again.exit_status == 0, again.stdout
    m_guest = chain.guest("m")
    addrs = m_guest.run("ip -4 -br addr", timeout=30).stdout
    assert str(chain.config.link("a-m").address_of("m").ip) in addrs, addrs


def test_stream_through_the_extension_with_offloads_crosses_as_super_frames(chain):
    """GRO on m's NICs hands the extension super-frames, TSO cuts them again: byte-exact at b,
    far fewer passes through the engine than wire segments, m's kernel still out of the way
    and its NICs' offloads given back afterwards."""
    ctx, a, b, b_ip = _through(chain, "extension-offload", 6325)
    m_guest = chain.guest("m")
    nic = {n["link"]: n["name"] for n in chain.state.node("m").nics}["a-m"]
    features = m_guest.run(f"ethtool -k {nic}", timeout=30).stdout
    with ctx as run:
        assert run.entry == b_ip
        checked_stream(a, b, b_ip, 6325, STREAM_BYTES, seed=13)
    m = run.middles["m"]
    ext = m["extension"]["extension"]
    assert m["kernel_forwarded_packets"] == 0, m
    assert ext["gso_forwarded"] > 0 and ext["gso_segments"] > 2 * ext["gso_forwarded"], ext
    assert ext["bad_gso"] == ext["gso_too_big"] == ext["bad_checksum"] == 0, ext
    assert m["wire_segments_per_s"] > m["forwarded_packets_per_s"], m
    assert m["extension"]["restarts"] == 0
    assert m_guest.run(f"ethtool -k {nic}", timeout=30).stdout == features  # given back


def test_stream_through_haproxy_on_m_is_byte_exact(chain):
    ctx, a, b, b_ip = _through(chain, "haproxy", 6330)
    with ctx as run:
        assert run.entry == str(chain.config.link("a-m").address_of("m").ip)
        checked_stream(a, b, b_ip, 6330, STREAM_BYTES, seed=11, peer=run.entry)
    m = run.middles["m"]
    assert m["forwarded_packets"] == 0 and m["cpu"] is not None  # relayed, not routed
    assert m["haproxy"]["event"] == "stopped", m
    left = chain.guest("m").run("ls /run/stackbed-haproxy-6330.* 2>/dev/null", timeout=30)
    assert left.stdout.strip() == "", left.stdout  # its configuration and pid file removed

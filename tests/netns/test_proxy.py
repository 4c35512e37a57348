"""The kernel-socket proxies (`guest.tools.proxy`, socket and splice modes) between two ends.

A chain A —veth— M —veth— B with IP forwarding off in M: the two ends are in different subnets,
each routed through M, so the only way from one to the other is the proxy listening in M. A
control shows that without it A cannot reach B, and that with forwarding on the same routes
work (so the control can fail). Through each mode: a 4 MB stream each way (sha256 at both ends,
reported by the traffic tool), request/response, two streams at once, and a half-close with
data flowing back after it; every time, the proxy's own counters must add up to what the ends
moved, and it must end with no file descriptor left open.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from guest.testing.netns import leftovers, unavailable_reason
from guest.testing.netns_chain import VethChain, veth_chain
from tests.netns import fixtures
from tests.netns.fixtures import final_record, wait_event

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

#: A's subnet (A and M's side facing it) and B's (B and M's other side).
A_IP, M_A_IP = "198.18.80.1", "198.18.80.2"
B_IP, M_B_IP = "198.18.81.1", "198.18.81.2"
NBYTES = 4 * 1_000_003 + 777
MODES = ("socket", "splice")


@pytest.fixture
def chain() -> Iterator[VethChain]:
    if (why := unavailable_reason()) is not None:
        pytest.skip(why)
    # M's offloads stay on: the proxy reads and writes through the kernel's sockets, not frames.
    with veth_chain(middle_offloads=True) as c:
        for ns, iface, cidr in (
            (c.ns_a, c.if_a, f"{A_IP}/24"),
            (c.ns_m, c.if_ma, f"{M_A_IP}/24"),
            (c.ns_m, c.if_mb, f"{M_B_IP}/24"),
            (c.ns_b, c.if_b, f"{B_IP}/24"),
        ):
            subprocess.run(["ip", "-n", ns, "addr", "add", cidr, "dev", iface], check=True)
        for ns, gateway in ((c.ns_a, M_A_IP), (c.ns_b, M_B_IP)):
            subprocess.run(["ip", "-n", ns, "route", "add", "default", "via", gateway], check=True)
        _forwarding(c.ns_m, False)  # a new namespace starts with it off; say so anyway
        yield c
    assert not {c.ns_a, c.ns_m, c.ns_b} & set(leftovers())


def _forwarding(ns: str, on: bool) -> None:
    argv = ["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.ip_forward={int(on)}"]
    subprocess.run(argv, check=True)


class Processes(fixtures.Processes):
    """`fixtures.Processes` that also starts the proxy."""

    def proxy(self, ns: str, mode: str, listen: str, to: str, *args: str) -> subprocess.Popen[str]:
        """A proxy in `ns`, listening once this returns."""
        argv = ["--mode", mode, "--listen", listen, "--to", to, *args]
        proc = self.start(ns, "guest.tools.proxy", *argv)
        wait_event(proc, "ready")
        return proc


def _stopped(proxy: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM the proxy; its final counters."""
    proxy.terminate()
    final = final_record(proxy, timeout=15)
    assert final["event"] == "stopped", final
    return final["stats"]


def _sink(procs: Processes, ns: str, port: int) -> subprocess.Popen[str]:
    sink = procs.start(ns, "guest.traffic", "sink", "--port", str(port))
    wait_event(sink, "listening", stderr=True)
    return sink


def _source(procs: Processes, ns: str, peer: str, port: int, *amount: str, seed: int = 11):
    return procs.start(
        ns, "guest.traffic", "source", "--peer", peer, "--port", str(port), *amount,
        "--seed", str(seed),
    )  # fmt: skip


def _intact(sent: dict[str, Any], got: dict[str, Any]) -> int:
    """Both ends agree on the bytes (count and sha256); how many."""
    assert sent.get("error") is None and got.get("error") is None, (sent, got)
    assert sent["bytes"] == got["bytes"] > 0, (sent, got)
    assert sent["sha256"] == got["sha256"], (sent, got)
    return int(sent["bytes"])


def _assert_relayed(stats: dict[str, Any], mode: str, up: int, down: int, conns: int) -> None:
    """The proxy's counters add up to what the ends moved, `conns` connections each completed
    with a half-close passed on both ways, and nothing left open."""
    c = stats["connections"]
    assert c["accepted"] == c["completed"] == conns, c
    assert c["failed"] == c["aborted"] == 0, c
    assert stats["fds_leaked"] == 0, stats
    for name, nbytes in (("client_to_server", up), ("server_to_client", down)):
        d = stats[name]
        assert d["bytes"] == nbytes, (name, d)
        assert d["half_closes"] == conns, (name, d)
        assert d["syscalls"] == d["reads"] + d["writes"], (name, d)
        # Every byte took at least one read and one write; EOF took one read more.
        assert d["reads"] >= conns and (nbytes == 0 or d["writes"] >= 1), (name, d)
        assert d["user_copy_bytes"] == (nbytes if mode == "socket" else 0), (name, d)


def _no_listener(ns: str, port: int, timeout: float = 10.0) -> None:
    """Wait until nothing listens on `port` in `ns` (the traffic sink closes its listener
    once it has accepted its one connection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        argv = ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"]
        if not subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip():
            return
        time.sleep(0.02)
    raise AssertionError(f"still listening on {port} after {timeout} s")


def test_control_forwarding_off_keeps_a_from_b(chain: VethChain) -> None:
    """Without a proxy A cannot reach B; with forwarding on, the same routes carry the stream,
    so the proxy tests below show the proxy at work, not the kernel forwarding."""
    with Processes() as procs:
        sink = _sink(procs, chain.ns_b, 7200)
        quick = ("--connect-timeout", "1", "--timeout", "2")
        source = _source(procs, chain.ns_a, B_IP, 7200, "--bytes", "100000", *quick)
        out, _ = source.communicate(timeout=30)
        assert source.returncode != 0, out
        assert "error" in json.loads(out.splitlines()[-1]), out
        _forwarding(chain.ns_m, True)
        source = _source(procs, chain.ns_a, B_IP, 7200, "--bytes", "100000", *quick)
        assert _intact(final_record(source), final_record(sink)) == 100000


@pytest.mark.parametrize("mode", MODES)
def test_stream_a_to_b(chain: VethChain, mode: str) -> None:
    with Processes() as procs:
        proxy = procs.proxy(chain.ns_m, mode, f"{M_A_IP}:7201", f"{B_IP}:7201")
        sink = _sink(procs, chain.ns_b, 7201)
        source = _source(procs, chain.ns_a, M_A_IP, 7201, "--bytes", str(NBYTES))
        assert _intact(final_record(source), final_record(sink)) == NBYTES
        _assert_relayed(_stopped(proxy), mode, NBYTES, 0, 1)


@pytest.mark.parametrize("mode", MODES)
def test_stream_b_to_a(chain: VethChain, mode: str) -> None:
    """The other way: a proxy listening on M's side facing B, relaying to a sink on A."""
    with Processes() as procs:
        proxy = procs.proxy(chain.ns_m, mode, f"{M_B_IP}:7202", f"{A_IP}:7202")
        sink = _sink(procs, chain.ns_a, 7202)
        source = _source(procs, chain.ns_b, M_B_IP, 7202, "--bytes", str(NBYTES), seed=12)
        assert _intact(final_record(source), final_record(sink)) == NBYTES
        _assert_relayed(_stopped(proxy), mode, NBYTES, 0, 1)


@pytest.mark.parametrize("mode", MODES)
def test_request_response(chain: VethChain, mode: str) -> None:
    count, req, resp = 2000, 100, 1000
    with Processes() as procs:
        proxy = procs.proxy(chain.ns_m, mode, f"{M_A_IP}:7203", f"{B_IP}:7203")
        server = procs.start(
            chain.ns_b, "guest.traffic", "rr-server", "--port", "7203",
            "--req-size", str(req), "--resp-size", str(resp),
        )  # fmt: skip
        wait_event(server, "listening", stderr=True)
        client = procs.start(
            chain.ns_a, "guest.traffic", "rr-client", "--peer", M_A_IP, "--port", "7203",
            "--count", str(count), "--req-size", str(req), "--resp-size", str(resp),
        )  # fmt: skip
        done, served = final_record(client), final_record(server)
        assert done["transactions"] == served["transactions"] == count, (done, served)
        _assert_relayed(_stopped(proxy), mode, count * req, count * resp, 1)


@pytest.mark.parametrize(("mode", "max_conns"), [("socket", 2), ("splice", 2), ("socket", 1)])
def test_two_streams_at_once(chain: VethChain, mode: str, max_conns: int) -> None:
    """Two sources through one proxy, the second started while the first still sends. With
    --max-conns 1 the second waits in the accept queue until the first is done, and still
    arrives intact."""
    with Processes() as procs:
        proxy = procs.proxy(
            chain.ns_m, mode, f"{M_A_IP}:7204", f"{B_IP}:7204", "--max-conns", str(max_conns)
        )
        sink1 = _sink(procs, chain.ns_b, 7204)
        source1 = _source(procs, chain.ns_a, M_A_IP, 7204, "--duration", "2", seed=21)
        # The sink takes one connection and then stops listening: the second sink can listen
        # on the same port only once the proxy's first connection has reached the first.
        _no_listener(chain.ns_b, 7204)
        sink2 = _sink(procs, chain.ns_b, 7204)
        source2 = _source(procs, chain.ns_a, M_A_IP, 7204, "--bytes", str(NBYTES), seed=22)
        first = _intact(final_record(source1), final_record(sink1))
        second = _intact(final_record(source2), final_record(sink2))
        assert second == NBYTES
        stats = _stopped(proxy)
        _assert_relayed(stats, mode, first + second, 0, 2)
        assert stats["connections"]["max_active"] == max_conns, stats


@pytest.mark.parametrize("mode", MODES)
def test_half_close(chain: VethChain, mode: str) -> None:
    """The client sends and shuts its write side; the server answers only after that EOF, so
    the answer arrives only if the proxy passed the half-close on and kept the way back open."""
    sent, reply = 1_000_003, 2_000_029
    with Processes() as procs:
        proxy = procs.proxy(chain.ns_m, mode, f"{M_A_IP}:7205", f"{B_IP}:7205")
        server = procs.start(
            chain.ns_b,
            "tests.netns.checks",
            "half_close_server",
            json.dumps({"bind": B_IP, "port": 7205, "reply": reply}),
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = procs.start(
            chain.ns_a,
            "tests.netns.checks",
            "half_close_client",
            json.dumps({"peer": M_A_IP, "port": 7205, "send": sent}),
        )
        asked, answered = final_record(client), final_record(server)
        assert answered["received"] == sent, answered
        assert answered["received_sha256"] == asked["sent_sha256"], (asked, answered)
        assert asked["received"] == reply, asked
        assert asked["received_sha256"] == answered["sent_sha256"], (asked, answered)
        _assert_relayed(_stopped(proxy), mode, sent, reply, 1)

"""The forwarding extension on a middle node: A —veth— M —veth— B, kernel forwarding off in M,
`python3 -m guest.stack.extension` on M's two interfaces, Linux's own stack at both ends.

Control first: without the extension A cannot reach B. Then across it: ping with the TTL taken
down by one (and a time-exceeded from the middle's address for TTL 1), 4 MB streams byte-exact
both ways and request/response; the extension SIGKILLed mid-stream and restarted by its
supervisor within 1 s, the stream still byte-exact; attacks from inside the confined extension
denied with the forwarding carrying on, and allowed in an unconfined control; malformed frames
from A counted, the extension alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from guest.stack.factored import sandbox, uring
from guest.testing.netns import ns_cmd
from guest.testing.netns_chain import VethChain, offloads_off, veth_chain
from tests.netns.fixtures import check, next_event, require_netns, result, start

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

NET_A, NET_B = "198.18.83", "198.18.84"
A, MA, MB, B = f"{NET_A}.1", f"{NET_A}.2", f"{NET_B}.2", f"{NET_B}.1"
NBYTES = 4 << 20


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@pytest.fixture
def chain() -> Iterator[VethChain]:
    """The chain with addresses and routes; M's kernel holds the middle's addresses too (so
    that the control shows the kernel, forwarding off, does not forward) until the extension
    takes the NICs over (and gives them back afterwards). Frames are MTU-sized at the ends."""
    with _chain(ends_offload=False) as c:
        yield c


@pytest.fixture
def offload_chain() -> Iterator[VethChain]:
    """The chain with the ends' offloads left on: A's TCP hands its veth 64 KiB super-frames
    (TSO), which a veth carries whole, as GRO makes them on a real NIC."""
    with _chain(ends_offload=True) as c:
        yield c


@contextlib.contextmanager
def _chain(ends_offload: bool) -> Iterator[VethChain]:
    require_netns("ethtool")
    for why in (sandbox.supported(), uring.supported()):
        if why is not None:
            pytest.skip(why)
    with veth_chain() as c:
        if not ends_offload:
            offloads_off(c.ns_a, c.if_a)  # frames on the wire MTU-sized at the ends too
            offloads_off(c.ns_b, c.if_b)
        _ip(c.ns_a, "addr", "add", f"{A}/24", "dev", c.if_a)
        _ip(c.ns_b, "addr", "add", f"{B}/24", "dev", c.if_b)
        _ip(c.ns_a, "route", "add", f"{NET_B}.0/24", "via", MA)
        _ip(c.ns_b, "route", "add", f"{NET_A}.0/24", "via", MB)
        _ip(c.ns_m, "addr", "add", f"{MA}/24", "dev", c.if_ma)
        _ip(c.ns_m, "addr", "add", f"{MB}/24", "dev", c.if_mb)
        sysctl = ["sysctl", "-qw", "net.ipv4.ip_forward=0"]
        subprocess.run(ns_cmd(c.ns_m, sysctl), check=True)
        yield c


class Extension:
    """The supervisor on M, always stopped (and its stopped line kept) by `close`."""

    def __init__(self, c: VethChain, *extra: str) -> None:
        self.proc = start(
            c.ns_m,
            "guest.stack.extension",
            *("--iface", c.if_ma, "--iface", c.if_mb),
            *("--addr", f"{c.if_ma}={MA}/24", "--addr", f"{c.if_mb}={MB}/24"),
            *extra,
        )
        self.ready = next_event(self.proc, "ready")
        self.pid = int(self.ready["extension"]["pid"])

    def close(self) -> dict[str, Any]:
        """Stop it; its final stats (the stopped line)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        stopped = [x for x in lines if x.get("event") == "stopped"]
        assert stopped, f"no stopped line ({self.proc.returncode}): {err[-3000:]}"
        return stopped[-1]["stats"]


def _echo(ns: str, dst: str, **kwargs: Any) -> list[dict[str, Any] | None]:
    return result(check(ns, "icmp_echo", dst=dst, **kwargs), timeout=30)["answers"]


def _traffic(ns: str, role: str, *args: str) -> subprocess.Popen[str]:
    return start(ns, "guest.traffic", role, *args)


def _stream(src_ns: str, dst_ns: str, peer: str, port: int, nbytes: int = NBYTES) -> dict:
    """A kernel-to-kernel stream `src_ns` -> `peer` (in `dst_ns`): the sink's result."""
    sink = _traffic(dst_ns, "sink", "--port", str(port))
    time.sleep(0.3)
    args = ("--peer", peer, "--port", str(port), "--bytes", str(nbytes), "--seed", str(port))
    src = result(_traffic(src_ns, "source", *args), timeout=120)
    got = result(sink, timeout=30)
    assert got["bytes"] == src["bytes"] == nbytes, (src, got)
    assert got["sha256"] == src["sha256"], "stream corrupted"
    return got


def test_without_the_extension_a_cannot_reach_b(chain: VethChain) -> None:
    """The control: M's kernel has the addresses but does not forward; its own address
    answers (the links work), B stays out of reach."""
    assert _echo(chain.ns_a, MA, count=1)[0] is not None
    assert _echo(chain.ns_a, B, count=2, timeout=1.0) == [None, None]


def test_ping_across_the_extension_takes_one_off_the_ttl(chain: VethChain) -> None:
    ext = Extension(chain)
    try:
        assert ext.ready["extension"]["confined"] is True, ext.ready
        assert ext.ready["extension"]["seccomp_mode"] == 2
        assert set(ext.ready["kernel_ingress"]) == {chain.if_ma, chain.if_mb}
        answers = _echo(chain.ns_a, B, count=3)
        assert all(a is not None for a in answers), answers
        # B answers with TTL 64; one hop on the way back: 63 at A.
        assert {(a["src"], a["type"], a["ttl"]) for a in answers} == {(B, 0, 63)}, answers
        expired = _echo(chain.ns_a, B, count=1, ttl=1)[0]
        assert expired is not None and (expired["src"], expired["type"]) == (MA, 11), expired
        # The kernel answers nothing on the middle's addresses any more.
        assert _echo(chain.ns_a, MA, count=1, timeout=0.5) == [None]
    finally:
        stats = ext.close()
    fwd = stats["extension"]
    assert fwd["forwarded"] >= 6 and fwd["ttl_expired"] == 1, fwd
    assert fwd["icmp_time_exceeded_out"] == 1 and fwd["to_self"] >= 1, fwd
    assert stats["per_frame"]["engine_copies_per_frame"] < 1, stats["per_frame"]
    assert stats["restarts"] == 0
    # Given back: the middle's kernel has its addresses again.
    out = subprocess.run(
        ["ip", "-n", chain.ns_m, "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    assert MA in out and MB in out, out


def test_streams_both_ways_and_request_response(chain: VethChain) -> None:
    ext = Extension(chain)
    try:
        there = _stream(chain.ns_a, chain.ns_b, B, 7301)
        back = _stream(chain.ns_b, chain.ns_a, A, 7302)
        server = _traffic(chain.ns_b, "rr-server", "--port", "7303")
        time.sleep(0.3)
        rr = result(_traffic(chain.ns_a, "rr-client", "--peer", B, "--port", "7303",
                             "--count", "300"), timeout=60)  # fmt: skip
        server.kill()
        server.communicate()
        assert rr["transactions"] == 300, rr
        print(f"extension: A->B {there['mbit_per_s']:.0f} Mbit/s, B->A {back['mbit_per_s']:.0f}"
              f" Mbit/s, rr {rr['latency_us']}")  # fmt: skip
    finally:
        stats = ext.close()
    print("stats", json.dumps(stats["per_frame"]), stats["kernel"])
    fwd = stats["extension"]
    assert fwd["forwarded"] >= 2 * NBYTES // 1500, fwd
    per = stats["per_frame"]
    assert per["syscalls_per_frame"] < 1, per  # batched: fewer syscalls than frames
    assert per["engine_copies_per_frame"] < 0.01, per  # the in-place path


def test_with_offloads_super_frames_cross_whole_and_byte_exact(offload_chain: VethChain) -> None:
    """`--offloads`: A's 64 KiB super-frames go through the engine whole (one pass each) and
    leave for B as super-frames again; both streams byte-exact. The control is the test above:
    without offloads every wire frame is a pass of its own."""
    c = offload_chain
    ext = Extension(c, "--offloads")
    try:
        assert ext.ready["offloads"] is True, ext.ready
        there = _stream(c.ns_a, c.ns_b, B, 7321)
        back = _stream(c.ns_b, c.ns_a, A, 7322)
        print(f"extension --offloads: A->B {there['mbit_per_s']:.0f} Mbit/s, "
              f"B->A {back['mbit_per_s']:.0f} Mbit/s")  # fmt: skip
        assert _echo(c.ns_a, B, count=2)[0] is not None  # plain frames still pass
    finally:
        stats = ext.close()
    fwd = stats["extension"]
    print("offloads", {k: fwd[k] for k in ("forwarded", "gso_forwarded", "gso_segments")})
    assert fwd["gso_forwarded"] > 0, fwd
    # Far fewer passes than wire segments: 8 MB would be over 5,000 MTU-sized frames.
    assert fwd["gso_segments"] > 4 * fwd["gso_forwarded"], fwd
    assert fwd["forwarded"] < 2 * NBYTES // 1500, fwd
    assert fwd["bad_gso"] == fwd["gso_too_big"] == fwd["oversized"] == 0, fwd


@pytest.mark.parametrize("extra", [(), ("--offloads",)], ids=["frames", "offloads"])
def test_killed_mid_stream_it_is_restarted_and_the_stream_completes(
    chain: VethChain, extra: tuple[str, ...]
) -> None:
    ext = Extension(chain, *extra)
    nbytes = 400 << 20  # some 3 s at the 1 Gbit/s it forwards here: killed well inside
    try:
        sink = _traffic(chain.ns_b, "sink", "--port", "7311")
        time.sleep(0.3)
        args = ("--peer", B, "--port", "7311", "--bytes", str(nbytes), "--seed", "11")
        source = _traffic(chain.ns_a, "source", *args)
        time.sleep(0.6)
        assert source.poll() is None, "the stream ended before the kill: make it longer"
        killed = time.monotonic()
        os.kill(ext.pid, signal.SIGKILL)
        died = next_event(ext.proc, "died", timeout=5)
        restarted = next_event(ext.proc, "restarted", timeout=5)
        seen = time.monotonic() - killed
        src = result(source, timeout=120)
        got = result(sink, timeout=30)
        print(f"died {died}, restarted {restarted}, seen after {seen * 1000:.0f} ms")
        assert "SIGKILL" in died["how"], died
        assert restarted["outage_ms"] < 1000 and seen < 2.0, restarted
        assert restarted["pid"] != ext.pid and restarted["confined"] is True
        assert got["bytes"] == src["bytes"] == nbytes
        assert got["sha256"] == src["sha256"], "stream corrupted across the restart"
        # ... and the new incarnation forwards the next stream too.
        _stream(chain.ns_b, chain.ns_a, A, 7312, 1 << 20)
    finally:
        stats = ext.close()
    assert stats["restarts"] == 1 and stats["incarnations"] == 2, stats
    assert stats["outages_ms"][0] < 1000


#: Every attack of `guest.stack.extension.attacks`.
ATTACKS = {
    "open_socket", "open_packet_socket", "open_file", "open_supervisor_memory",
    "ptrace_supervisor", "signal_supervisor", "spawn_process", "set_nic_mtu", "set_nic_flags",
    "set_nic_address", "make_code_writable", "map_uring_entries", "create_uring",
    "register_on_uring",
}  # fmt: skip


def _attacked(ext: Extension) -> dict[str, str]:
    os.kill(ext.pid, signal.SIGUSR1)
    results = next_event(ext.proc, "attacks")["results"]
    print("attacks", json.dumps(results, indent=1))
    assert set(results) == ATTACKS, results
    return results


def test_attacks_from_inside_are_denied_and_forwarding_carries_on(chain: VethChain) -> None:
    ext = Extension(chain, "--attackable")
    try:
        sink = _traffic(chain.ns_b, "sink", "--port", "7321")
        time.sleep(0.3)
        args = ("--peer", B, "--port", "7321", "--bytes", str(24 << 20), "--seed", "21")
        source = _traffic(chain.ns_a, "source", *args)
        time.sleep(0.3)
        results = _attacked(ext)  # mid-stream
        through = {name: r for name, r in results.items() if not r.startswith("denied")}
        assert not through, through
        src, got = result(source, timeout=120), result(sink, timeout=30)
        assert got["bytes"] == src["bytes"] and got["sha256"] == src["sha256"]
        assert ext.proc.poll() is None
        assert _echo(chain.ns_a, B, count=1)[0] is not None
    finally:
        stats = ext.close()
    assert stats["restarts"] == 0, "the extension died during the attacks"


def test_without_confinement_the_same_attacks_get_through(chain: VethChain) -> None:
    """The control: the attacks are real, the sandbox is what stops them (registering on the
    io_uring is refused by the ring's own restrictions, confined or not)."""
    ext = Extension(chain, "--attackable", "--no-confine")
    try:
        assert ext.ready["extension"]["confined"] is False
        results = _attacked(ext)
        through = {name for name, r in results.items() if r.startswith("SUCCEEDED")}
        assert through == ATTACKS - {"register_on_uring"}, results
        _stream(chain.ns_a, chain.ns_b, B, 7331, 1 << 20)
    finally:
        stats = ext.close()
    assert stats["restarts"] == 0


def test_malformed_frames_are_counted_and_the_extension_lives(chain: VethChain) -> None:
    ext = Extension(chain)
    try:
        mac_m = ext.ready["ifaces"][chain.if_ma]["mac"]
        sent = result(check(chain.ns_a, "hostile_frames", iface=chain.if_a, dst_mac=mac_m,
                            src=A, dst=B, rounds=3), timeout=30)["sent"]  # fmt: skip
        assert sent["runt"] == 3 and sent["bad_checksum"] == 3, sent
        time.sleep(0.3)
        assert _echo(chain.ns_a, B, count=1)[0] is not None  # still forwarding
    finally:
        stats = ext.close()
    fwd = stats["extension"]
    print("counters", json.dumps({k: v for k, v in fwd.items() if v}))
    assert stats["restarts"] == 0 and stats["incarnations"] == 1
    for counter in ("bad_header", "bad_checksum", "options_dropped", "bad_fragment",
                    "martian_source", "bad_arp"):  # fmt: skip
        assert fwd[counter] >= 3, (counter, fwd)
    assert fwd["ttl_expired"] >= 6, fwd  # TTL 0 and TTL 1
    assert fwd["forwarded"] >= 2, fwd  # the echo and its reply, nothing hostile

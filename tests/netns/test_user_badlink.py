"""Our stack, monolithic and factored, against Linux TCP through a bad link: loss, duplication,
corruption, reordering and delay, in both directions, byte-exact.

This host's kernel has no netem, so the impairment comes from the user-space relay
(`guest.tools.relay`) in a middle namespace: ours (A) —veth— relay (M) —veth— Linux (B).
One long-running stack serves both transfers (our source -> Linux sink, then Linux source -> our
sink), so its final counters cover everything it did. Besides the bytes arriving intact, the
test checks that the link really was bad (the relay's counts, Linux's checksum errors) and that
our stack coped with it the way TCP should: by retransmitting, a sensible number of times, and
by dropping what failed its checksums.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guest.testing.netns import leftovers, snmp_counters, unavailable_reason
from guest.testing.netns_chain import VethChain, offloads_off, veth_chain
from tests.netns.fixtures import Processes, final_record, netns_chain, wait_event

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

OURS, LINUX = "198.18.78.1", "198.18.78.2"
NBYTES = 1_500_007
#: Longest a transfer through the bad link may take.
TRANSFER_TIMEOUT_S = 90.0
#: Per frame and direction. Corruption is above the "0.5 %" a netem line would use, so that the
#: ~1500-2000 frames each direction carries almost surely (P(none) ~ 1e-7) include some.
IMPAIRMENT = {
    "--loss": "2%",
    "--duplicate": "1%",
    "--corrupt": "1%",
    "--reorder": "10%",
    "--delay-ms": "1",
    "--reorder-delay-ms": "5",
    "--seed": "78",
}


@pytest.fixture
def chain() -> Iterator[VethChain]:
    for c in netns_chain(tools=("ethtool",)):
        subprocess.run(
            ["ip", "-n", c.ns_b, "addr", "add", f"{LINUX}/24", "dev", c.if_b], check=True
        )
        # Linux on veth leaves checksums to "hardware" and segments to GSO, and may trust a
        # frame's checksum instead of verifying it; a real NIC does neither on the wire.
        offloads_off(c.ns_b, c.if_b)
        yield c


def _stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM, then the final JSON line (`{"event": "stopped", ...}`)."""
    proc.terminate()
    return final_record(proc, timeout=15)


def _assert_intact(sent: dict[str, Any], got: dict[str, Any], src: str, dst: str) -> None:
    assert sent.get("error") is None and got.get("error") is None, (sent, got)
    assert (sent["path"], got["path"]) == (src, dst)
    assert sent["bytes"] == got["bytes"] == NBYTES
    assert sent["sha256"] == got["sha256"]


@pytest.mark.parametrize("path", ["mono", "factored"])
def test_both_directions_through_a_bad_link(chain: VethChain, tmp_path: Path, path: str) -> None:
    sock = str(tmp_path / "stack.sock")
    mono = ["--path", path, "--stack-socket", sock]
    impairment = [arg for pair in IMPAIRMENT.items() for arg in pair]
    began = time.monotonic()
    # All on one CPU: a veth hands a frame to the receive backlog of the CPU that sent it, so a
    # sender moving between CPUs can reorder its own frames before the relay sees them, and the
    # relay would count the late originals as retransmissions.
    with Processes(cpu=0) as procs:
        relay = procs.start(
            chain.ns_m,
            "guest.tools.relay",
            "--a",
            chain.if_ma,
            "--b",
            chain.if_mb,
            *impairment,
        )
        wait_event(relay, "ready")
        stack = procs.start(
            chain.ns_a,
            f"guest.stack.{path}",
            "--iface",
            chain.if_a,
            "--addr",
            f"{OURS}/24",
            "--socket",
            sock,
            # MTU-sized frames: the relay forwards frames as they come, it does not segment
            # a TSO super-frame the way a NIC would.
            "--offload",
            "none",
        )
        wait_event(stack, "ready")

        # Our source -> Linux sink.
        t0 = time.monotonic()
        sink = procs.start(chain.ns_b, "guest.traffic", "sink", "--port", "7101")
        wait_event(sink, "listening", stderr=True)
        source = procs.start(
            chain.ns_a,
            "guest.traffic",
            "source",
            *mono,
            "--peer",
            LINUX,
            "--port",
            "7101",
            "--bytes",
            str(NBYTES),
            "--seed",
            "11",
        )
        _assert_intact(
            final_record(source, timeout=TRANSFER_TIMEOUT_S),
            final_record(sink, timeout=TRANSFER_TIMEOUT_S),
            path,
            "kernel",
        )
        outbound_s = time.monotonic() - t0

        # Linux source -> our sink.
        t0 = time.monotonic()
        sink = procs.start(chain.ns_a, "guest.traffic", "sink", *mono, "--port", "7102")
        wait_event(sink, "listening", stderr=True)
        source = procs.start(
            chain.ns_b,
            "guest.traffic",
            "source",
            "--peer",
            OURS,
            "--port",
            "7102",
            "--bytes",
            str(NBYTES),
            "--seed",
            "12",
        )
        _assert_intact(
            final_record(source, timeout=TRANSFER_TIMEOUT_S),
            final_record(sink, timeout=TRANSFER_TIMEOUT_S),
            "kernel",
            path,
        )
        inbound_s = time.monotonic() - t0

        # The stack first, so that the relay has seen every frame the stack sent.
        ours = _stop(stack)["stats"]["stack"]
        link = _stop(relay)["stats"]
        linux = snmp_counters(chain.ns_b)

    summary = {
        "seconds": {
            "outbound": round(outbound_s, 2),
            "inbound": round(inbound_s, 2),
            "total": round(time.monotonic() - began, 2),
        },
        "relay": link,
        "ours": {k: v for k, v in ours.items() if k.startswith(("tcp", "drop", "frames"))},
        "linux": {
            k: linux[k]
            for k in ("Tcp.RetransSegs", "Tcp.InCsumErrors", "IpExt.InCsumErrors", "Ip.InHdrErrors")
        },
    }
    print("badlink", json.dumps(summary))  # shown with -s, or on failure

    # The link was bad both ways, in every way asked for, and the relay itself lost nothing.
    for direction in ("a_to_b", "b_to_a"):
        d = link[direction]
        assert d["lost"] > 0 and d["duplicated"] > 0 and d["corrupted"] > 0, (direction, d)
        assert d["reordered"] > 0, (direction, d)
        assert d["send_errors"] == d["rx_kernel_drops"] == d["rx_errors"] == 0, (direction, d)
        assert d["forwarded"] == d["delivered"], (direction, d)
    # Linux saw the damaged frames and refused them on their checksums.
    assert linux["Tcp.InCsumErrors"] + linux["IpExt.InCsumErrors"] > 0, summary["linux"]

    # Our stack refused damaged frames too, and no more than the relay damaged (a corrupted
    # frame may have been duplicated, so twice that at most).
    bad_sums = sum(v for k, v in ours.items() if k.startswith("drop.") and "checksum" in k)
    corrupted = link["b_to_a"]["corrupted"] - link["b_to_a"]["corrupted_dropped"]
    assert 0 < bad_sums <= 2 * corrupted, (bad_sums, corrupted, ours)
    # The relay saw every frame our stack sent (as many, or more if the NIC cut TSO frames).
    assert link["a_to_b"]["offered"] >= ours["frames_out"], (link["a_to_b"], ours)

    # Our stack retransmitted, a sensible number of times (loss and corruption alone cost ~3 %
    # of the segments; reordering adds spurious fast retransmits) ...
    assert "tcp.retransmits_fast" in ours, f"no stack-wide TCP counters (tcp.*): {ours}"
    resent = ours["tcp.retransmits_fast"] + ours["tcp.retransmits_timeout"]
    assert 0 < resent < 0.25 * ours["tcp.segments_out"], ours
    # ... and the wire agrees: the relay saw as many resends from it (probes also resend).
    seen = link["a_to_b"]["tcp_retransmitted"]
    probes = ours["tcp.window_probes"] + ours["tcp.keepalive_probes"]
    assert resent <= seen <= resent + probes, (seen, ours)
    # The relay counts Linux's resends as Linux does, so its figure for our stack is one to trust.
    assert link["b_to_a"]["tcp_retransmitted"] == linux["Tcp.RetransSegs"], (link, linux)


def test_chain_is_removed_even_when_the_block_fails() -> None:
    if (why := unavailable_reason()) is not None:
        pytest.skip(why)
    if shutil.which("ethtool") is None:
        pytest.skip("`ethtool` is not installed")
    with pytest.raises(RuntimeError, match="boom"), veth_chain() as c:
        names = {c.ns_a, c.ns_m, c.ns_b}
        assert names <= set(leftovers())
        raise RuntimeError("boom")
    assert not names & set(leftovers())

"""Our stack under attack on a real veth, as an attacker on the link would attack it.

A SYN flood from spoofed sources of the link's subnet (`guest.tools.flood`), then a Linux
client connects to our stack's listener: with SYN cookies it is accepted within a second and
its bytes arrive intact, while the stack keeps no more half-open connections than its backlog;
with cookies off (the control) the flood locks it out. Then forged RSTs and ACKs at a live
connection's 4-tuple: the transfer still completes byte-exact, and what the stack sends in
answer stays within its rate limits.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guest.testing.netns import VethPair
from guest.testing.netns_chain import offloads_off
from tests.netns.fixtures import (
    Processes,
    check,
    final_record,
    netns_pair,
    start,
    wait_event,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

OURS, LINUX = "198.18.76.2", "198.18.76.1"
SUBNET = "198.18.76.0/24"
PORT = 7201
SYNS = 3000


@pytest.fixture
def pair() -> Iterator[VethPair]:
    for p in netns_pair(tools=("ethtool", "ss")):
        subprocess.run(
            ["ip", "-n", p.ns_a, "addr", "add", f"{LINUX}/24", "dev", p.if_a], check=True
        )
        offloads_off(p.ns_a, p.if_a)  # wire-sized frames to a stack started without offloads
        yield p


def _stack(procs: Processes, pair: VethPair, sock: str, *extra: str) -> Any:
    stack = procs.start(
        pair.ns_b, "guest.stack.mono", "--iface", pair.if_b, "--addr", f"{OURS}/24",
        "--socket", sock, "--offload", "none", *extra,
    )  # fmt: skip
    wait_event(stack, "ready")
    return stack


def _sink(procs: Processes, pair: VethPair, sock: str) -> Any:
    sink = procs.start(
        pair.ns_b, "guest.traffic", "sink", "--path", "mono", "--stack-socket", sock,
        "--port", str(PORT), "--timeout", "60",
    )  # fmt: skip
    wait_event(sink, "listening", stderr=True)
    return sink


def _flood(pair: VethPair, kind: str, *extra: str) -> dict[str, Any]:
    proc = start(
        pair.ns_a, "guest.tools.flood", "--iface", pair.if_a, "--kind", kind, "--dst", OURS,
        "--dst-mac", pair.mac_b, "--port", str(PORT), "--subnet", SUBNET, "--exclude", LINUX,
        *extra,
    )  # fmt: skip
    return final_record(proc, timeout=60)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("cookies", [True, False], ids=["cookies", "control-no-cookies"])
def test_a_client_gets_in_during_a_syn_flood(pair: VethPair, tmp_path: Path, cookies: bool) -> None:
    sock = str(tmp_path / "stack.sock")
    with Processes() as procs:
        stack = _stack(procs, pair, sock, *([] if cookies else ["--no-syncookies"]))
        sink = _sink(procs, pair, sock)
        rss_before = _rss_kib(stack.pid)
        flood = _flood(pair, "syn", "--count", str(SYNS))
        assert flood["sent"] == SYNS
        client = final_record(
            check(pair.ns_a, "timed_client", peer=OURS, port=PORT, send=300_000, seed=5), 60
        )
        if not cookies:
            # The backlog is full of half-open connections that will never complete.
            assert not client["connected"], client
            return
        assert client["connected"] and client["connect_s"] < 1.0, client
        got = final_record(sink, timeout=60)
        assert got["bytes"] == client["bytes"] and got["sha256"] == client["sha256"]
        rss_after = _rss_kib(stack.pid)
        stats = final_record_of_stack(stack)
    counters = stats["stack"]
    # Backlog 16; past it, cookies. A burst at full speed overflows the NIC's receive ring
    # too, so not every SYN reaches the stack.
    assert SYNS // 2 <= counters["tcp_syncookies_sent"] <= SYNS - 16, counters
    assert counters["tcp_syncookies_validated"] == 1
    # Bounded: no state per cookie; the process grew by less than 8 MiB for 3000 SYNs.
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)


def _client_port(ns: str) -> int:
    """The local port of Linux's connection to our stack (what the forger must know), once
    it is established."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established", "dst", OURS],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        for field in out:
            if field.startswith(f"{LINUX}:"):
                return int(field.rsplit(":", 1)[1])
        time.sleep(0.05)
    raise AssertionError("the stream never got established")


def final_record_of_stack(stack: Any) -> dict[str, Any]:
    """Stop the stack (SIGTERM) and return its final statistics."""
    stack.terminate()
    return final_record(stack, timeout=30)["stats"]


def test_a_live_connection_rides_out_forged_resets_and_acks(pair: VethPair, tmp_path: Path) -> None:
    """A 4-second stream from Linux to our stack while 4000 forged RSTs and ACKs (random
    numbers) hit its 4-tuple: it completes byte-exact, and the stack answers them within its
    limits (challenge ACKs 10 per second, out-of-window ACKs 2 per second)."""
    sock = str(tmp_path / "stack.sock")
    with Processes() as procs:
        stack = _stack(procs, pair, sock)
        sink = _sink(procs, pair, sock)
        source = procs.start(
            pair.ns_a, "guest.traffic", "source", "--path", "kernel", "--peer", OURS,
            "--port", str(PORT), "--duration", "4", "--seed", "6",
        )  # fmt: skip
        port = _client_port(pair.ns_a)
        floods = [
            _flood(pair, kind, "--src", LINUX, "--src-mac", pair.mac_a, "--src-port", str(port),
                   "--count", "2000", "--rate", "2000")
            for kind in ("rst", "ack")
        ]  # fmt: skip
        sent = final_record(source, timeout=120)
        got = final_record(sink, timeout=60)
        stats = final_record_of_stack(stack)
    assert all(f["sent"] == 2000 for f in floods), floods
    assert sent.get("error") is None and got.get("error") is None, (sent, got)
    assert got["bytes"] == sent["bytes"] > 1_000_000 and got["sha256"] == sent["sha256"]
    tcp = stats["stack"]
    seconds = sum(f["seconds"] for f in floods) + 2
    assert tcp.get("tcp.challenge_acks", 0) <= 10 * seconds, json.dumps(tcp)

"""Per-segment cost of the protocol domain: `python3 -m guest.bench.core`.

Receive path: a stream of prebuilt, valid 1514-byte frames (1448-byte TCP payload plus the
timestamp option) goes into an established connection's `receive_frame`; each is followed by
`tcp_recv` (data delivered to the application) and `poll` (the ACK frame built), as a stack's
main loop does. Measured with delayed ACKs (an ACK per two segments, the default), with an ACK
per segment, and with receive checksum offload (`checksum_ok=True`).

Send path: an application writes 64 KiB at a time to an established connection and `poll`
builds the data frames; the peer's ACKs (from a second stack, wired back to back) are fed in.
Only the sending stack's calls are timed: with full checksums, with transmit checksum offload
(the seed only), and with TSO (64000-byte frames; the device's segmentation is not counted).
Request/response: both stacks' work for a 64-byte request and its 64-byte answer.
Every figure with TCP header prediction on and off (`TcpConfig.fast_path`), side by side.

`--profile` prints where the receive path's time goes (cProfile, top functions).
Each figure is the best of `--repeat` runs (the least disturbed by the rest of the machine).
Numbers are CPython-on-this-machine numbers: compare runs, not absolutes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from dataclasses import replace

from guest.stack.core.gso import segment_tso
from guest.stack.core.netstack import NetStack, TsoFrame
from guest.stack.core.offload import finish_checksums
from guest.stack.tcp import TcpConfig
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN
from guest.stack.wire.frame import emit_tcp_frame
from guest.stack.wire.ipv4 import Ipv4Packet, Ipv4Repr
from guest.stack.wire.tcp import TcpRepr

MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")
SEGMENT = 1448


def _pair(config: TcpConfig, **kw: object) -> tuple[NetStack, NetStack, int, int]:
    """Two stacks wired back to back with one established connection A -> B; `kw` are
    `NetStack` arguments for A."""
    a = NetStack(MAC_A, "198.18.1.1/24", tcp_config=config, secret=b"bench-a", **kw)  # type: ignore[arg-type]
    b = NetStack(MAC_B, "198.18.1.2/24", tcp_config=config, secret=b"bench-b")
    lh = b.tcp_listen(5001)
    ha = a.tcp_connect("198.18.1.2", 5001, 0.0)
    _shuttle(a, b, 0.0)
    hb = b.tcp_accept(lh)
    assert hb is not None
    a.events()
    b.events()
    return a, b, ha, hb


def _shuttle(a: NetStack, b: NetStack, now: float) -> None:
    """Exchange frames until both stacks are quiet."""
    for _ in range(1000):
        fa = a.poll(now)
        fb = b.poll(now)
        if not fa and not fb:
            return
        for f in fa:
            for piece in _wire(f, a.tx_checksum_offload):
                b.receive_frame(piece, now)
        for f in fb:
            a.receive_frame(f, now)
    raise RuntimeError("stacks did not settle")


def _data_frames(a: NetStack, b: NetStack, ha: int, count: int) -> list[bytearray]:
    """`count` consecutive full-sized data frames A would send next (headers from a real one)."""
    a.tcp_send(ha, os.urandom(SEGMENT))
    (template,) = a.poll(0.0)
    assert len(template) == ETH_LEN + 20 + 32 + SEGMENT
    b.receive_frame(template, 0.0)
    b.poll(0.0)
    packet = Ipv4Packet(memoryview(template)[ETH_LEN:])
    ip = Ipv4Repr.parse(packet)
    seg = TcpRepr.parse(packet.payload, ip.src_addr, ip.dst_addr)
    payload = os.urandom(SEGMENT)
    frames = []
    for i in range(1, count + 1):
        buf = bytearray(template)
        start = len(buf) - SEGMENT
        buf[start:] = payload
        hdr = replace(seg, seq=(seg.seq + i * SEGMENT) & 0xFFFFFFFF, payload=b"")
        emit_tcp_frame(buf, None, ip, hdr, SEGMENT, ETH_LEN)
        frames.append(buf)
    return frames


def bench_receive(
    count: int, *, delayed_ack: bool, checksum_ok: bool, fast_path: bool = True
) -> tuple[float, float]:
    """Returns (microseconds per segment, ACK frames per segment)."""
    config = TcpConfig(delayed_ack=delayed_ack, fast_path=fast_path)
    a, b, ha, hb = _pair(config)
    frames = _data_frames(a, b, ha, count)
    receive = b.receive_frame
    poll = b.poll
    recv = b.tcp_recv
    events = b.events
    acks = 0
    now = 0.001
    start = time.perf_counter()
    for frame in frames:
        receive(frame, now, checksum_ok)
        recv(hb)
        acks += len(poll(now))
        events()
    elapsed = time.perf_counter() - start
    assert b.counters.drops_total == 0, b.counters.drops
    assert b.socket_info(hb)["stats"]["bytes_in"] == (count + 1) * SEGMENT  # type: ignore[index]
    return elapsed / count * 1e6, acks / count


def bench_rr(count: int, *, fast_path: bool = True) -> float:
    """Microseconds of both stacks' work per 64-byte request and 64-byte answer.

    Per transaction: A sends the request and B receives it, hands it to its application and
    answers; A receives the answer (which carries B's ACK) and hands it on. Delayed ACKs never
    fire: each side's data acknowledges the other's, as in the traffic tool's rr test.
    """
    a, b, ha, hb = _pair(TcpConfig(fast_path=fast_path))
    request, answer = os.urandom(64), os.urandom(64)
    now = 0.001
    start = time.perf_counter()
    for _ in range(count):
        a.tcp_send(ha, request)
        for f in a.poll(now):
            b.receive_frame(f, now)
        b.tcp_recv(hb)
        b.tcp_send(hb, answer)
        for f in b.poll(now):
            a.receive_frame(f, now)
        a.tcp_recv(ha)
        for f in a.poll(now):
            b.receive_frame(f, now)
        b.poll(now)
        a.events()
        b.events()
    elapsed = time.perf_counter() - start
    assert b.socket_info(hb)["stats"]["bytes_in"] == count * 64  # type: ignore[index]
    return elapsed / count * 1e6


def _wire(frame: bytearray, offload: bool) -> list[bytearray]:
    """What a device does to a frame before it reaches the peer: TSO and checksum offload."""
    if type(frame) is TsoFrame:
        return segment_tso(frame, frame.mss)
    if offload:
        finish_checksums(frame)
    return [frame]


def bench_send(
    total: int, *, tso: int = 0, offload: bool = False, fast_path: bool = True
) -> tuple[float, int]:
    """Returns (microseconds per segment in the sender, segments sent)."""
    config = TcpConfig(send_buffer_size=1 << 20, recv_buffer_size=4 << 20, fast_path=fast_path)
    a, b, ha, hb = _pair(config, tso_max_size=tso, tx_checksum_offload=offload)
    chunk = os.urandom(65536)
    sent = 0
    spent = 0.0
    now = 0.0
    clock = time.perf_counter
    while sent < total:
        now += 0.0001
        t0 = clock()
        while sent < total:
            piece = chunk[: total - sent]
            n = a.tcp_send(ha, piece)
            sent += n
            if n < len(piece):
                break
        frames = a.poll(now)
        spent += clock() - t0
        for f in frames:
            for piece in _wire(f, offload):
                b.receive_frame(piece, now)
        while b.tcp_recv(hb):
            pass
        acks = b.poll(now)
        t0 = clock()
        for f in acks:
            a.receive_frame(f, now)
        spent += clock() - t0
        b.events()
        a.events()
    # Drain what is still in flight.
    for _ in range(1000):
        now += 0.0001
        t0 = clock()
        frames = a.poll(now)
        spent += clock() - t0
        if not frames and not a.socket_info(ha)["send_queued"]:
            break
        for f in frames:
            for piece in _wire(f, offload):
                b.receive_frame(piece, now)
        while b.tcp_recv(hb):
            pass
        t0 = clock()
        for f in b.poll(now):
            a.receive_frame(f, now)
        spent += clock() - t0
    segments = -(-total // SEGMENT)
    assert b.socket_info(hb)["stats"]["bytes_in"] == total  # type: ignore[index]
    return spent / segments * 1e6, segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=20000, help="segments per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; best is shown")
    parser.add_argument("--profile", action="store_true", help="cProfile the receive path")
    parser.add_argument(
        "--fast-path",
        choices=("both", "on", "off"),
        default="both",
        help="header prediction on, off, or both side by side (default)",
    )
    args = parser.parse_args()
    n = args.segments

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        bench_receive(n, delayed_ack=True, checksum_ok=False)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return

    modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.fast_path]
    print(f"receive path, {SEGMENT}-byte segments: frame in -> data delivered -> ACK out")
    for label, kw in (
        ("delayed ACK (1 ACK / 2 segments)", {"delayed_ack": True, "checksum_ok": False}),
        ("ACK every segment", {"delayed_ack": False, "checksum_ok": False}),
        ("delayed ACK, rx checksum offload", {"delayed_ack": True, "checksum_ok": True}),
    ):
        for fast in modes:
            us, acks = min(bench_receive(n, fast_path=fast, **kw) for _ in range(args.repeat))
            rate = f"{1e6 / us:9,.0f} segments/s"
            print(f"  {label:36s} {_fp(fast)} {us:7.2f} us/segment  {rate}  {acks:.2f} ACK/seg")

    print(f"send path, {SEGMENT}-byte segments: tcp_send -> data frames out (+ ACK processing)")
    total = n * SEGMENT
    for label, tso, offload in (
        ("full checksums", 0, False),
        ("tx checksum offload", 0, True),
        ("TSO 64000-byte frames", 64000, False),
    ):
        for fast in modes:
            us, segs = min(
                bench_send(total, tso=tso, offload=offload, fast_path=fast)
                for _ in range(args.repeat)
            )
            rate = f"{1e6 / us:9,.0f} segments/s"
            print(f"  {label:36s} {_fp(fast)} {us:7.2f} us/segment  {rate}  ({segs} segs)")

    print("request/response, 64 bytes each way: both stacks' work per transaction")
    for fast in modes:
        us = min(bench_rr(n // 4, fast_path=fast) for _ in range(args.repeat))
        label = "send, receive, answer, receive"
        print(f"  {label:36s} {_fp(fast)} {us:7.2f} us/transaction  {1e6 / us:9,.0f} trans/s")


def _fp(fast: bool) -> str:
    return "fast path on " if fast else "fast path off"


if __name__ == "__main__":
    main()

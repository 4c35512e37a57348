"""What one forwarded frame costs the extension's engine: `python3 -m guest.bench.forward`.

The forwarding extension moves frames between two NICs' rings with almost no system calls
(one poll per batch, one transmit request per batch), so what bounds its rate is the Python
work per frame. This measures that work without any I/O, on the sans-I/O engine
(`guest.stack.forward.Forwarder`) the extension runs: a TCP segment of `--size` bytes from
the client's subnet to a resolved neighbour on the other, `Forwarder.handle` called on it
`--frames` times (each call rewrites the frame in place: MACs, TTL, checksum per RFC 1624, so
the frame is refreshed from a template each time, as a new slot of the RX ring would be).
Beside it, in the same run, the floor: the same loop doing only that refresh and one copy of
the frame into a second buffer (what moving a frame from an RX slot to a TX slot costs at
the least in Python). The engine is measured with its fast path (the flow cache) and, in the
same run, with the full path alone (alternated, best of two each). With `--profile`, the
engine's time by function (cProfile), so a reader sees where a frame's microseconds go.

Prints one JSON object; run it natively and in a guest to see the interpreter's cost under
an emulator. No timed assertions anywhere: it is a benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time

from guest.stack.forward import Forwarder, Interface
from guest.stack.wire.addr import ipv4, mac
from guest.stack.wire.arp import OP_REPLY, ArpRepr
from guest.stack.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.ipv4 import PROTO_TCP, Ipv4Repr

IN_MAC, OUT_MAC = "02:00:00:00:01:01", "02:00:00:00:02:01"
CLIENT_MAC, SERVER_MAC = mac("52:54:00:00:01:02"), mac("52:54:00:00:02:02")
CLIENT_IP, SERVER_IP = ipv4("198.18.1.2"), ipv4("198.18.2.2")
OUT_IP = ipv4("198.18.2.1")


def engine(fast_path: bool = True) -> Forwarder:
    return Forwarder(
        [
            Interface.from_text("in", IN_MAC, "198.18.1.1/24"),
            Interface.from_text("out", OUT_MAC, "198.18.2.1/24"),
        ],
        fast_path=fast_path,
    )


def tcp_frame(size: int) -> bytearray:
    """An Ethernet frame of `size` bytes carrying an IPv4 datagram with TCP's protocol number
    (the engine does not look past the IP header)."""
    payload = size - 14 - 20
    buf = bytearray(size)
    EthernetRepr(CLIENT_MAC, mac(IN_MAC), ETHERTYPE_IPV4).emit(buf, 0)
    Ipv4Repr(CLIENT_IP, SERVER_IP, PROTO_TCP, payload, 64, 0x4242, True).emit(buf, 14)
    return buf


def resolved(fw: Forwarder, frame: bytearray) -> None:
    """The server's MAC learnt the way the extension learns it: the first frame makes the
    engine ask (ARP request), the server answers."""
    now = time.monotonic()
    fw.handle("in", bytearray(frame), now)
    reply = bytearray(42)
    EthernetRepr(SERVER_MAC, mac(OUT_MAC), ETHERTYPE_ARP).emit(reply, 0)
    ArpRepr(OP_REPLY, SERVER_MAC, SERVER_IP, mac(OUT_MAC), OUT_IP).emit(reply, 14)
    fw.handle("out", reply, now)
    out = fw.handle("in", bytearray(frame), now)
    if [iface for iface, _ in out] != ["out"]:
        raise RuntimeError(f"the engine did not forward the frame: {fw.stats()}")


def run_engine(fw: Forwarder, frame: bytearray, count: int) -> float:
    """Microseconds per forwarded frame (template refresh included, as in `run_floor`)."""
    slot = bytearray(len(frame))
    handle, now = fw.handle, time.monotonic()
    t0 = time.perf_counter()
    for _ in range(count):
        slot[:] = frame
        handle("in", slot, now)
    return (time.perf_counter() - t0) / count * 1e6


def run_floor(frame: bytearray, count: int) -> float:
    """Microseconds per frame for the refresh and one copy into a TX slot, nothing else."""
    slot, tx = bytearray(len(frame)), bytearray(len(frame))
    t0 = time.perf_counter()
    for _ in range(count):
        slot[:] = frame
        tx[:] = slot
    return (time.perf_counter() - t0) / count * 1e6


def profile(fw: Forwarder, frame: bytearray, count: int, top: int = 8) -> list[dict]:
    """The engine's functions by their own time over `count` frames (cProfile, which itself
    slows every call down: read the shares, not the absolute figures)."""
    prof = cProfile.Profile()
    prof.enable()
    run_engine(fw, frame, count)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1.0
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [
        {
            "function": f"{func[0].rsplit('/', 1)[-1]}:{func[1]}:{func[2]}",
            "calls_per_frame": round(v[1] / count, 2),
            "own_share": round(v[2] / total, 3),
        }
        for func, v in rows
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.bench.forward", description=__doc__)
    ap.add_argument("--frames", type=int, default=200_000, help="frames per measurement")
    ap.add_argument("--size", type=int, default=1514, help="frame size in bytes (54..1514)")
    ap.add_argument("--profile", action="store_true", help="add the engine's time by function")
    args = ap.parse_args(argv)
    if not 54 <= args.size <= 1514 or args.frames < 1:
        ap.error("--size must be 54..1514 and --frames at least 1")
    frame = tcp_frame(args.size)
    per_frame = {True: float("inf"), False: float("inf")}
    # Alternated, best of two each: under an emulator the first run also pays for warming
    # the translation cache, which would be charged to whichever path went first.
    for fast_path in (True, False, True, False):
        fw = engine(fast_path)
        resolved(fw, frame)
        before = fw.stats()["forwarded"]
        per_frame[fast_path] = min(per_frame[fast_path], run_engine(fw, frame, args.frames))
        forwarded = fw.stats()["forwarded"] - before
        if forwarded != args.frames:
            print(f"forward bench: {forwarded} of {args.frames} forwarded", file=sys.stderr)
            return 1
    engine_us, full_us = per_frame[True], per_frame[False]
    fw = engine()
    resolved(fw, frame)
    floor_us = run_floor(frame, args.frames)
    out = {
        "frames": args.frames,
        "size": args.size,
        "engine_us_per_frame": round(engine_us, 3),
        "engine_frames_per_s": round(1e6 / engine_us),
        "full_path_us_per_frame": round(full_us, 3),
        "fast_over_full": round(engine_us / full_us, 3),
        "floor_us_per_frame": round(floor_us, 3),
        "engine_over_floor": round(engine_us / floor_us, 1) if floor_us > 0 else None,
        "python": sys.version.split()[0],
    }
    if args.profile:
        out["profile"] = profile(fw, frame, min(args.frames, 50_000))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

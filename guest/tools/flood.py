"""Forged TCP segments from spoofed sources of one subnet, bounded in count and time:
`python3 -m guest.tools.flood`.

What an attacker on the link sends to a stack, for the tests and benchmarks that show the
stack survives it: a SYN flood (`--kind syn`: every SYN from another address and port of the
subnet, so that each takes a place in the listener's queue), or RSTs and ACKs aimed at one
connection (`--kind rst`/`ack` with `--src` and `--src-port` fixed, random sequence and
acknowledgment numbers). Frames are built with the stack's own wire code and written to an
AF_PACKET socket, so nothing of the host's stack is involved in sending them.

Never unbounded: `--count` frames at most, for `--seconds` at most. Spoofed sources are drawn
from `--subnet` only, which must lie in 198.18.0.0/15 (RFC 2544's benchmarking range), so the
answers to them stay there too. Prints one JSON line: `{"event": "done", "sent": N, ...}`.
Needs CAP_NET_RAW.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import sys
import time

from guest.stack.wire.addr import ipv4
from guest.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.frame import emit_tcp_frame, tcp_payload_offset
from guest.stack.wire.ipv4 import Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .cli import positive_int

BENCH_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
KINDS = {"syn": TcpFlags.SYN, "rst": TcpFlags.RST, "ack": TcpFlags.ACK}


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def frames(args: argparse.Namespace) -> list[bytes]:
    """Every frame the run will send, built up front so that sending is all the loop does."""
    rng = random.Random(args.seed)
    subnet = ipaddress.IPv4Network(args.subnet)
    hosts = [h for h in subnet.hosts() if str(h) not in (args.dst, *args.exclude)]
    out = []
    for _ in range(args.count):
        src = args.src or str(rng.choice(hosts))
        src_mac = bytes([0x02, *rng.randbytes(5)]) if args.src is None else _mac(args.src_mac)
        tcp = TcpRepr(
            src_port=args.src_port or rng.randrange(1024, 65536),
            dst_port=args.port,
            seq=rng.getrandbits(32),
            ack=rng.getrandbits(32) if args.kind != "syn" else 0,
            flags=KINDS[args.kind],
            window=64240,
            mss=1460 if args.kind == "syn" else None,
        )
        buf = bytearray(tcp_payload_offset(tcp))
        ip = Ipv4Repr(ipv4(src), ipv4(args.dst), 0, 0)
        emit_tcp_frame(buf, EthernetRepr(src_mac, _mac(args.dst_mac), ETHERTYPE_IPV4), ip, tcp, 0)
        out.append(bytes(buf))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.tools.flood", description=__doc__)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--kind", choices=tuple(KINDS), required=True)
    ap.add_argument("--dst", required=True, help="the target's address")
    ap.add_argument("--dst-mac", required=True, help="the target's MAC")
    ap.add_argument("--port", type=positive_int, required=True, help="the target's port")
    ap.add_argument("--subnet", required=True, help="spoofed sources come from here")
    ap.add_argument("--exclude", action="append", default=[], help="a source never to spoof")
    ap.add_argument("--src", help="one fixed source (rst/ack at a connection)")
    ap.add_argument("--src-mac", default="02:00:00:00:00:01", help="with --src: its MAC")
    ap.add_argument("--src-port", type=positive_int, help="one fixed source port")
    ap.add_argument("--count", type=positive_int, default=3000, help="at most 1000000")
    ap.add_argument("--seconds", type=float, default=10.0, help="stop after (at most 60)")
    ap.add_argument("--rate", type=float, default=0.0, help="frames per second (0: at once)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.count > 1_000_000 or not 0 < args.seconds <= 60:
        ap.error("bounded runs only: --count <= 1000000 and 0 < --seconds <= 60")
    for name in ("subnet", "dst", "src"):
        value = getattr(args, name)
        if value is not None and not ipaddress.ip_network(value).subnet_of(BENCH_RANGE):
            ap.error(f"--{name} {value} is outside 198.18.0.0/15")
    built = frames(args)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((args.iface, 0))
    began = time.monotonic()
    deadline = began + args.seconds
    sent = 0
    for frame in built:
        now = time.monotonic()
        if now >= deadline:
            break
        if args.rate > 0 and (wait := began + sent / args.rate - now) > 0:
            time.sleep(wait)
        try:
            sock.send(frame)
        except BlockingIOError:
            continue
        sent += 1
    sock.close()
    seconds = time.monotonic() - began
    print(json.dumps({"event": "done", "kind": args.kind, "sent": sent, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

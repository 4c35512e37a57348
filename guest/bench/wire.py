"""Per-packet cost of the wire layer: `python3 -m guest.bench.wire [--seconds S]`.

Prints parse and emit rates for a full-size (1514-byte) Ethernet/IPv4/TCP frame carrying the
timestamp option, as the receive and transmit paths would do them, and raw checksum
throughput. Numbers are CPython-on-this-machine numbers: compare runs, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from guest.stack.wire.addr import ipv4, mac
from guest.stack.wire.checksum import ones_sum
from guest.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, EthernetRepr
from guest.stack.wire.frame import emit_tcp_frame, tcp_payload_offset
from guest.stack.wire.ipv4 import Ipv4Packet, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr

FRAME_LEN = 1514


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn`, timed in batches so the clock is not read per call."""
    batch = 1
    while True:  # calibrate: a batch should take ~10 ms
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - start > 0.01:
            break
        batch *= 2
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(batch):
            fn()
        calls += batch
    return calls / (now - start)


def _templates() -> tuple[EthernetRepr, Ipv4Repr, TcpRepr, int]:
    eth = EthernetRepr(mac("52:54:00:00:00:01"), mac("52:54:00:00:00:02"), ETHERTYPE_IPV4)
    ip = Ipv4Repr(ipv4("10.0.0.1"), ipv4("10.0.0.2"), 0, 0, dont_frag=True)
    tcp = TcpRepr(
        40000, 5001, 123456789, 987654321, TcpFlags.ACK | TcpFlags.PSH, 502, timestamp=(7, 9)
    )
    payload_len = FRAME_LEN - tcp_payload_offset(tcp)
    return eth, ip, tcp, payload_len


def build_frame() -> bytearray:
    """A valid 1514-byte frame with random payload (checksums filled in)."""
    eth, ip, tcp, payload_len = _templates()
    buf = bytearray(FRAME_LEN)
    start = tcp_payload_offset(tcp)
    buf[start:] = os.urandom(payload_len)
    emit_tcp_frame(buf, eth, ip, tcp, payload_len)
    return buf


def parse_frame(frame: bytearray, verify: bool = True) -> TcpRepr:
    """The receive path's decode: Ethernet -> IPv4 -> TCP with checksums verified."""
    eth = EthernetFrame.new_checked(frame)
    EthernetRepr.parse(eth)
    packet = Ipv4Packet(eth.payload)
    ip = Ipv4Repr.parse(packet, verify)
    return TcpRepr.parse(packet.payload, ip.src_addr, ip.dst_addr, verify)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    seconds: float = args.seconds

    frame = build_frame()
    assert parse_frame(frame).payload.obj is frame
    eth, ip, tcp, payload_len = _templates()
    out = bytearray(frame)  # payload already in place, as on the transmit path

    def emit() -> int:
        return emit_tcp_frame(out, eth, ip, tcp, payload_len)

    def emit_nocsum() -> int:
        return emit_tcp_frame(out, eth, ip, tcp, payload_len, compute_checksums=False)

    rows = [
        ("parse eth+ipv4+tcp, checksums verified", _rate(lambda: parse_frame(frame), seconds)),
        ("parse eth+ipv4+tcp, no checksum", _rate(lambda: parse_frame(frame, False), seconds)),
        ("emit eth+ipv4+tcp headers, checksums", _rate(emit, seconds)),
        ("emit eth+ipv4+tcp headers, no checksum", _rate(emit_nocsum, seconds)),
    ]
    print(f"{FRAME_LEN}-byte TCP frame ({payload_len}-byte payload, timestamp option):")
    for name, rate in rows:
        print(f"  {name:42s} {rate:>10,.0f} pkt/s  {1e6 / rate:6.2f} us/pkt")

    print("Internet checksum (ones_sum) throughput:")
    for size in (20, 1500, 65536):
        data = os.urandom(size)
        rate = _rate(lambda data=data: ones_sum(data), seconds)
        print(f"  {size:6d} bytes  {rate * size / 1e6:10.1f} MB/s  {1e6 / rate:8.2f} us/call")


if __name__ == "__main__":
    main()

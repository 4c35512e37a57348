"""Send or count test frames on one interface; one JSON line of results on stdout.

The worker that the device tests and `guest.bench.device` start inside a network namespace::

    python3 -m guest.tools.probe recv --kind ring --iface IF [--count N] ...
    python3 -m guest.tools.probe send --kind packet --iface IF --dst MAC --count N ...

Frames are valid Ethernet frames to `--dst` with the IEEE local experimental ethertype 0x88B5,
so no protocol on either host reacts to them, and both devices bind that ethertype only, so
no stray frame (IPv6 autoconfiguration, say) is counted. Frame *i* carries *i* as a 32-bit
sequence number after the header, then bytes from a seeded pseudo-random pattern: the
receiver checks order and gaps and both sides hash what they moved, so a test compares two
sha256 digests instead of shipping frames around. `recv` prints "ready" once bound, so the
sender is started only when nothing can be missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import select
import sys
import time
from typing import Any

from guest.stack.device import abi
from guest.stack.device.base import Device
from guest.stack.device.packet import PacketDevice
from guest.stack.device.ring import RingDevice, RingGeometry
from guest.stack.wire.vnet import PLAIN_BYTES

SEQ_AT = abi.ETH_HLEN
_PATTERN_LEN = 1 << 16
#: Frames prebuilt for timed (benchmark) runs, sent round-robin.
_POOL = 256


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class FrameSource:
    """Deterministic test frames: header, sequence number, seeded pattern bytes."""

    def __init__(self, dst: bytes, src: bytes, size: int, seed: int = 1, vnet: bool = False):
        if size < abi.ETH_HLEN + 4:
            raise ValueError(f"frames must be at least {abi.ETH_HLEN + 4} bytes")
        self._prefix = (PLAIN_BYTES if vnet else b"") + dst + src + b"\x88\xb5"
        self._body = size - abi.ETH_HLEN - 4
        rng = random.Random(seed)
        self._pattern = rng.randbytes(_PATTERN_LEN + self._body)

    def frame(self, seq: int) -> bytes:
        at = (seq * 7919) % _PATTERN_LEN
        return self._prefix + seq.to_bytes(4, "big") + self._pattern[at : at + self._body]


def open_device(args: argparse.Namespace) -> Device:
    """The device `--kind` names, bound to the experimental ethertype only."""
    if args.kind == "packet":
        return PacketDevice(
            args.iface,
            protocol=abi.ETH_P_EXPERIMENTAL,
            vnet_hdr=args.vnet,
            qdisc_bypass=args.qdisc_bypass,
        )
    geometry = None
    if args.block_size:
        geometry = RingGeometry(args.block_size, args.block_nr, args.frame_size)
    return RingDevice(
        args.iface,
        version=args.version,
        protocol=abi.ETH_P_EXPERIMENTAL,
        rx=geometry if args.cmd == "recv" else None,
        tx=geometry if args.cmd == "send" else None,
        retire_ms=args.retire_ms,
        vnet_hdr=args.vnet,
        qdisc_bypass=args.qdisc_bypass,
    )


def run_recv(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Count (and hash, and check the order of) frames until `--count`, idle or timeout."""
    digest = hashlib.sha256() if args.digest else None
    poller = select.poll()
    poller.register(dev.fileno(), select.POLLIN)
    frames = nbytes = gaps = reordered = 0
    expected = None
    first = last = 0.0
    skip = dev.vnet_hdr_len
    print("ready", flush=True)
    cpu0 = cpu_seconds()
    start = time.monotonic()
    deadline = start + args.timeout
    while frames < args.count:
        batch = dev.recv_batch(args.batch)
        now = time.monotonic()
        if not batch:
            if now > deadline or (frames and now - last > args.idle):
                break
            poller.poll(20)
            continue
        if not frames:
            first = now
        last = now
        for frame in batch:
            frames += 1
            nbytes += len(frame) - skip
            if digest is not None:
                digest.update(frame[skip:])
            if args.check:
                seq = int.from_bytes(frame[skip + SEQ_AT : skip + SEQ_AT + 4], "big")
                if expected is not None and seq != expected:
                    if seq > expected:
                        gaps += seq - expected
                    else:
                        reordered += 1
                expected = seq + 1
    cpu = cpu_seconds() - cpu0
    stats = dev.stats.as_dict()
    dev.close()
    return {
        "role": "recv",
        "frames": frames,
        "bytes": nbytes,
        "sha256": digest.hexdigest() if digest is not None else None,
        "gaps": gaps,
        "reordered": reordered,
        "active_s": last - first,
        "cpu_s": cpu,
        "stats": stats,
    }


def run_send(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Send `--count` frames, or prebuilt frames round-robin for `--seconds`."""
    dst = bytes.fromhex(args.dst.replace(":", ""))
    source = FrameSource(dst, dev.mac, args.size, args.seed, vnet=bool(dev.vnet_hdr_len))
    digest = hashlib.sha256() if args.digest else None
    poller = select.poll()
    poller.register(dev.fileno(), select.POLLOUT)
    timed = args.seconds > 0
    pool = [source.frame(i) for i in range(_POOL)] if timed else []
    skip = dev.vnet_hdr_len
    sent = 0
    cpu0 = cpu_seconds()
    start = time.monotonic()
    deadline = start + args.seconds
    while True:
        if timed:
            if time.monotonic() >= deadline:
                break
            at = sent % _POOL
            batch = pool[at : at + args.batch]
        else:
            if sent >= args.count:
                break
            batch = [source.frame(sent + i) for i in range(min(args.batch, args.count - sent))]
        done = dev.send_batch(batch)
        if digest is not None:
            for frame in batch[:done]:
                digest.update(frame[skip:])
        sent += done
        if done < len(batch):
            poller.poll(5)  # no room: wait until the kernel frees some
        elif args.gap_ms:
            time.sleep(args.gap_ms / 1000)
    dev.flush()
    while dev.tx_pending:
        poller.poll(5)
        dev.flush()
    elapsed = time.monotonic() - start
    cpu = cpu_seconds() - cpu0
    stats = dev.stats.as_dict()
    dev.close()
    return {
        "role": "send",
        "frames": sent,
        "bytes": sent * args.size,
        "sha256": digest.hexdigest() if digest is not None else None,
        "active_s": elapsed,
        "cpu_s": cpu,
        "stats": stats,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cmd", choices=["send", "recv"])
    parser.add_argument("--kind", choices=["packet", "ring"], required=True)
    parser.add_argument("--iface", required=True)
    parser.add_argument("--dst", default="ff:ff:ff:ff:ff:ff", help="send: destination MAC")
    parser.add_argument("--count", type=int, default=1 << 62, help="frames to send/expect")
    parser.add_argument("--seconds", type=float, default=0.0, help="send: timed run")
    parser.add_argument("--size", type=int, default=1514, help="send: frame length")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="send: pause between batches")
    parser.add_argument("--timeout", type=float, default=10.0, help="recv: give up after")
    parser.add_argument("--idle", type=float, default=0.5, help="recv: stop when idle this long")
    parser.add_argument("--no-digest", dest="digest", action="store_false")
    parser.add_argument("--no-check", dest="check", action="store_false")
    parser.add_argument("--vnet", action="store_true", help="PACKET_VNET_HDR")
    parser.add_argument("--qdisc-bypass", action="store_true")
    parser.add_argument("--version", type=int, default=3, choices=[2, 3], help="ring: TPACKET")
    parser.add_argument("--retire-ms", type=int, default=1, help="ring: V3 block timeout")
    parser.add_argument("--block-size", type=int, default=0, help="ring geometry (0: default)")
    parser.add_argument("--block-nr", type=int, default=0)
    parser.add_argument("--frame-size", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dev = open_device(args)
    result = run_recv(dev, args) if args.cmd == "recv" else run_send(dev, args)
    result["kind"] = args.kind
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

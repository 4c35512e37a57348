"""A user-space impairment relay: a bad link between two interfaces, built from packet sockets.

Where the kernel has no netem qdisc (this testbed's host kernel has none), a lossy link between
network namespaces has to be made in user space. The relay sits in a middle namespace (or VM)
holding two interfaces, reads every frame arriving on one with an AF_PACKET socket and writes it
out of the other, after the impairment model has decided its fate. It is a transparent bridge:
both ends see each other's MACs and ARP crosses it like any other frame.

The impairment model is the simulators' own (`guest.testing.impairment.ImpairedLink`): loss,
corruption, reordering, duplication, delay and an optional bandwidth with a drop-tail queue,
drawn from a seeded RNG in a fixed order. Reusing it means a figure measured through the relay
and one from a simulation mean the same thing, and the relay adds only what a real link has and
a simulation lacks: I/O. Each direction has its own RNG, so what happens to the frames going one
way does not depend on how traffic the other way interleaves with them.

Corruption XORs one byte of the IPv4 packet (never the Ethernet header, never padding after the
packet) with a random non-zero value. Any change confined to one byte alters the Internet
checksum, so a receiver that verifies checksums must drop the frame, which is what the
corruption is there to exercise. A frame with no end-to-end checksum (ARP, or anything not IPv4)
is dropped instead when corrupted: on a real wire the Ethernet FCS would have caught it, and
delivering a damaged ARP reply would poison a neighbour cache rather than test a checksum.

The relay also watches the TCP sequence numbers each sender puts on the wire (before any
impairment) and counts segments that resend sequence space already sent: the senders'
retransmissions as an observer sees them, whatever counters the endpoints keep.

Single-threaded: one poll loop reads both sockets and a heap of (due time, frame) releases
delayed frames; a frame is never held by the kernel side longer than the poll timeout allows.
It needs only the standard library and root (CAP_NET_RAW), so it runs in a minimal guest too:

    python3 -m guest.tools.relay --a eth1 --b eth2 --loss 2% --delay-ms 1 --seed 7

It prints `{"event": "ready", ...}` once both sockets are bound and, on SIGTERM/SIGINT, a final
`{"event": "stopped", "stats": {"a_to_b": {...}, "b_to_a": {...}}}` line. The interfaces must
already be up; their offloads should be off (GRO would hand the relay merged super-frames larger
than the MTU, which it cannot send; those are counted as `send_errors`).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

from guest.testing.impairment import ImpairedLink, LinkConfig

from .cli import non_negative, stop_on_signals

ETH_P_ALL = 0x0003
ETH_HLEN = 14
ETHERTYPE_IPV4 = b"\x08\x00"
PROTO_TCP = 6
#: <linux/if_packet.h> socket options and values (the socket module lacks most of them).
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; root may exceed net.core.rmem_max
#: Preamble, FCS and inter-frame gap: what a frame costs on the wire beyond its bytes (only
#: matters with a bandwidth), counted as the frame-level simulator counts it.
WIRE_OVERHEAD = 24
#: Largest frame read; GRO super-frames are read whole (and then fail to send, counted).
RECV_SIZE = 65536
#: Frames read from one socket per wake-up, so the other direction and due frames are served.
RECV_BATCH = 256
#: Longest poll, so that a stop request is seen even on an idle link.
IDLE_POLL_S = 0.1
RCVBUF_BYTES = 4 * 1024 * 1024
DIRECTIONS = ("a_to_b", "b_to_a")

_SEQ_MASK = 0xFFFFFFFF
_SEQ_HALF = 1 << 31
_PACKET_MREQ = struct.Struct("iHH8s")
_TPACKET_STATS = struct.Struct("II")


# ===================================================================== pure logic (no sockets)


def corrupt_frame(frame: bytes, rng: random.Random) -> bytearray | None:
    """`frame` with one byte of its IPv4 packet XORed with a random non-zero value, or None when
    the frame has no checksum that would catch the damage (not IPv4, or no packet at all).

    The byte is chosen within the packet's Total Length, so the damage never lands in Ethernet
    padding (which no checksum covers) and every corrupted frame is one a receiver must drop.
    """
    if len(frame) <= ETH_HLEN or frame[12:14] != ETHERTYPE_IPV4:
        return None
    end = len(frame)
    if len(frame) >= ETH_HLEN + 4:
        total_len = int.from_bytes(frame[ETH_HLEN + 2 : ETH_HLEN + 4], "big")
        end = min(end, ETH_HLEN + max(total_len, 20))
    damaged = bytearray(frame)
    damaged[rng.randrange(ETH_HLEN, end)] ^= rng.randrange(1, 256)
    return damaged


class SeqWatch:
    """Counts the TCP segments a sender puts on the wire and how many of them were resends.

    A segment that starts below the highest sequence number already sent on its flow (4-tuple)
    covers space sent before: a retransmission (timeout, fast, SACK-driven or spurious alike; a
    window or keep-alive probe below the edge counts too). Segments occupying no sequence space
    (pure ACKs) are ignored. A SYN that is not a resend of the flow's SYN starts the flow anew.
    """

    def __init__(self) -> None:
        self._high: dict[bytes, int] = {}
        self._isn: dict[bytes, int] = {}
        #: Segments carrying payload, SYN or FIN.
        self.segments = 0
        self.retransmitted = 0

    def observe(self, frame: bytes) -> None:
        """Look at one frame as its sender emitted it; anything but IPv4/TCP is ignored."""
        if len(frame) < ETH_HLEN + 20 or frame[12:14] != ETHERTYPE_IPV4:
            return
        ip = ETH_HLEN
        if frame[ip + 9] != PROTO_TCP or int.from_bytes(frame[ip + 6 : ip + 8], "big") & 0x3FFF:
            return  # not TCP, or a fragment (whose TCP header may be elsewhere)
        ihl = (frame[ip] & 0x0F) * 4
        tcp = ip + ihl
        if len(frame) < tcp + 20:
            return
        total_len = int.from_bytes(frame[ip + 2 : ip + 4], "big")
        flags = frame[tcp + 13]
        # Sequence space: payload, plus one each for SYN and FIN.
        length = total_len - ihl - (frame[tcp + 12] >> 4) * 4 + (flags & 0x01) + (flags >> 1 & 1)
        syn = flags & 0x02
        if length <= 0:
            return
        seq = int.from_bytes(frame[tcp + 4 : tcp + 8], "big")
        key = bytes(frame[ip + 12 : ip + 20]) + bytes(frame[tcp : tcp + 4])
        self.segments += 1
        if syn and self._isn.get(key) != seq:
            self._isn[key] = seq
            self._high[key] = (seq + length) & _SEQ_MASK
            return
        end = (seq + length) & _SEQ_MASK
        high = self._high.get(key)
        if high is None:
            self._high[key] = end
            return
        if 0 < (high - seq) & _SEQ_MASK < _SEQ_HALF:  # seq < high: space already sent
            self.retransmitted += 1
        if 0 < (end - high) & _SEQ_MASK < _SEQ_HALF:  # end > high
            self._high[key] = end


class Direction:
    """One way through the relay: an `ImpairedLink` deciding each frame's fate, and counters."""

    def __init__(self, name: str, config: LinkConfig, seed: int) -> None:
        self.name = name
        # A string seed is hashed (SHA-512) by `random`: stable across runs and processes.
        self.rng = random.Random(f"stackbed-relay/{seed}/{name}")
        self.link = ImpairedLink(config, self.rng)
        self.watch = SeqWatch()
        #: Frames written to the outgoing interface.
        self.forwarded = 0
        #: Corrupted frames dropped because no checksum would have caught them (see module doc).
        self.corrupted_dropped = 0
        #: Frames the outgoing socket refused (full queue, larger than the MTU).
        self.send_errors = 0
        #: Frames the receiving socket's kernel queue dropped before the relay read them.
        self.rx_kernel_drops = 0
        #: Errors the receiving socket reported (the interface went down, ...).
        self.rx_errors = 0

    def offer(self, frame: bytes, now: float) -> list[tuple[float, bytes]]:
        """(time due, frame) for each copy of `frame` to send on; empty when it is lost."""
        self.watch.observe(frame)
        out: list[bytes] = [frame]

        def corrupt() -> bool:
            damaged = corrupt_frame(frame, self.rng)
            if damaged is None:
                self.corrupted_dropped += 1
                return False
            out[0] = bytes(damaged)
            return True

        return [(t, out[0]) for t in self.link.schedule(len(frame) + WIRE_OVERHEAD, now, corrupt)]

    def stats(self) -> dict[str, int]:
        """The link's decisions plus what happened at the sockets, flat, for JSON."""
        out = asdict(self.link.stats)
        out.update(
            forwarded=self.forwarded,
            corrupted_dropped=self.corrupted_dropped,
            send_errors=self.send_errors,
            rx_kernel_drops=self.rx_kernel_drops,
            rx_errors=self.rx_errors,
            tcp_segments=self.watch.segments,
            tcp_retransmitted=self.watch.retransmitted,
        )
        return out


class Relay:
    """Both directions and the heap of frames on their way: the relay without its sockets.

    Side 0 is interface a, side 1 is b; a frame offered on one side is due on the other.
    """

    def __init__(self, config: LinkConfig, seed: int, backward: LinkConfig | None = None) -> None:
        self.directions = (
            Direction(DIRECTIONS[0], config, seed),
            Direction(DIRECTIONS[1], backward or config, seed),
        )
        self._heap: list[tuple[float, int, int, bytes]] = []
        # Ties on the due time keep the order frames were offered in.
        self._order = itertools.count()

    def offer(self, side: int, frame: bytes, now: float) -> None:
        """A frame received on `side` at `now`: schedule its copies for the other side."""
        for due, copy in self.directions[side].offer(frame, now):
            heapq.heappush(self._heap, (due, next(self._order), 1 - side, copy))

    def next_due(self) -> float | None:
        """When the earliest frame on its way is due, or None if none is."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[int, bytes]]:
        """(side to send on, frame) for every frame due by `now`, earliest first."""
        heap = self._heap
        out = []
        while heap and heap[0][0] <= now:
            _, _, side, frame = heapq.heappop(heap)
            out.append((side, frame))
        return out

    @property
    def pending(self) -> int:
        """Frames still on their way (lost if the relay stops now)."""
        return len(self._heap)

    def stats(self) -> dict[str, dict[str, int]]:
        return {d.name: d.stats() for d in self.directions}


# ===================================================================== sockets and the loop


def open_port(iface: str) -> socket.socket:
    """A non-blocking packet socket receiving every frame that arrives on `iface`, and only those.

    Created with protocol 0 (receiving nothing) and bound with ETH_P_ALL, so that no frame of
    another interface is queued between creation and bind. PACKET_IGNORE_OUTGOING keeps the
    relay's own transmissions out of its receive queue (it would forward them back otherwise);
    promiscuous membership makes a NIC that filters by MAC deliver the frames addressed to the
    far end (veth delivers them anyway). Membership ends with the socket.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        # Kernels before 4.20 lack the option: `serve` drops PACKET_OUTGOING frames itself.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        mreq = _PACKET_MREQ.pack(socket.if_nametoindex(iface), PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.bind((iface, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def kernel_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped on `sock` since the last call (reading resets the counter)."""
    _packets, drops = _TPACKET_STATS.unpack(
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
    )
    return drops


def serve(
    relay: Relay,
    socks: Sequence[socket.socket],
    should_stop: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Forward between `socks[0]` (side a) and `socks[1]` (side b) until `should_stop()`."""
    poller = select.poll()
    side_of = {}
    for side, sock in enumerate(socks):
        poller.register(sock.fileno(), select.POLLIN)
        side_of[sock.fileno()] = side
    directions = relay.directions
    while not should_stop():
        now = clock()
        for side, frame in relay.pop_due(now):
            try:
                socks[side].send(frame)
                directions[1 - side].forwarded += 1
            except OSError:
                directions[1 - side].send_errors += 1
        due = relay.next_due()
        timeout = IDLE_POLL_S if due is None else min(IDLE_POLL_S, max(0.0, due - clock()))
        for fd, _mask in poller.poll(timeout * 1000.0):
            side = side_of[fd]
            sock = socks[side]
            now = clock()
            for _ in range(RECV_BATCH):
                try:
                    frame, addr = sock.recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ENETDOWN, reported once: count it and carry on
                    directions[side].rx_errors += 1
                    break
                if addr[2] != PACKET_OUTGOING:
                    relay.offer(side, frame, now)
    for side, sock in enumerate(socks):
        directions[side].rx_kernel_drops += kernel_drops(sock)


def _probability(text: str) -> float:
    """A probability: `0.02` or `2%`."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a probability: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability out of [0, 1]: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python3 -m guest.tools.relay",
        description="Bridge two interfaces through a seeded impairment model (user-space netem).",
    )
    ap.add_argument("--a", required=True, metavar="IF", help="first interface")
    ap.add_argument("--b", required=True, metavar="IF", help="second interface")
    p = "probability per frame and direction, 0.02 or 2%% (default 0)"
    ap.add_argument("--loss", type=_probability, default=0.0, help=p)
    ap.add_argument("--duplicate", type=_probability, default=0.0, help=p)
    ap.add_argument("--corrupt", type=_probability, default=0.0, help=p)
    ap.add_argument("--reorder", type=_probability, default=0.0, help=p)
    ap.add_argument(
        "--delay-ms", type=non_negative, default=0.0, help="one-way delay in ms (default 0)"
    )
    ap.add_argument(
        "--reorder-delay-ms",
        type=non_negative,
        default=LinkConfig().reorder_delay * 1000,
        help="reordered and duplicated frames come up to this much later, ms (default %(default)g)",
    )
    ap.add_argument(
        "--bandwidth", type=non_negative, help="bit/s per direction (default: unlimited)"
    )
    ap.add_argument(
        "--queue-bytes", type=int, help="drop-tail queue limit in bytes (with --bandwidth)"
    )
    ap.add_argument("--seed", type=int, default=1, help="RNG seed (default 1)")
    return ap


def config_from_args(args: argparse.Namespace) -> LinkConfig:
    """The per-direction `LinkConfig` the command line describes."""
    return replace(
        LinkConfig(),
        delay=args.delay_ms / 1000,
        bandwidth=args.bandwidth or None,
        queue_bytes=args.queue_bytes,
        loss=args.loss,
        duplicate=args.duplicate,
        corrupt=args.corrupt,
        reorder=args.reorder,
        reorder_delay=args.reorder_delay_ms / 1000,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    relay = Relay(config, args.seed)
    should_stop = stop_on_signals()
    socks = [open_port(args.a)]
    try:
        socks.append(open_port(args.b))
        for sock in socks:
            kernel_drops(sock)  # start the counters from zero
        ready = {"event": "ready", "a": args.a, "b": args.b, "seed": args.seed, "pid": os.getpid()}
        ready["config"] = asdict(config)
        print(json.dumps(ready), flush=True)
        started = time.monotonic()
        serve(relay, socks, should_stop)
        elapsed = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    final = {
        "event": "stopped",
        "elapsed_s": round(elapsed, 3),
        "pending": relay.pending,
        "stats": relay.stats(),
    }
    print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

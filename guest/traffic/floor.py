"""The `floor` path: the least a Python program does to move the same bytes over the same NIC.

Our stacks pay for TCP, the session boundary to the application and a process of their own.
This path pays for none of it, so that a reader sees in the same run how far our stack is from
what the Python runtime allows on this NIC, and how far the runtime is from the kernel: the
traffic tool's own workloads (stream with sha256 at both ends, 64-byte request/response) run
unchanged over a stream that the application's process moves itself through a PACKET_MMAP
ring (`RingDevice`, as the monolithic stack's default device), in raw Ethernet frames of the
local experimental ethertype, with no protocol beyond what keeps the bytes whole and paced:

- a connection is a HELLO the client broadcasts on the link with the server's port and an id
  of its choosing, answered by the listening server (which is how each learns the other's MAC);
- DATA frames carry a frame number, the payload (at most what a TCP segment with timestamps
  carries on this MTU, so both move the same frames for the same bytes) and the number of the
  next frame expected from the peer (a cumulative ACK, piggybacked); a receiver keeps only the
  frames past a gap until it is filled (a link may reorder), ACKs every `ACK_EVERY` frames,
  and otherwise within `ACK_DELAY_S` unless data of its own carries the ACK first; the first
  frame past a gap draws one NAK (the number of the frame missing), no more for that gap;
- a sender keeps at most `WINDOW` frames unacknowledged and sends its first unacknowledged
  frame again on a NAK of it (once per frame) or after `RTO_S` without progress: losses on
  the host's UDP links happen, and every byte must still arrive;
- FIN ends a direction like a DATA frame with no payload.

Every frame carries a CRC-32 (zlib's, in C), the least an end-to-end check costs. No routing,
one connection per process, and only on a link joining the two ends directly (it speaks no
IP). It is a yardstick, not a transport to use.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import struct
import time
import zlib
from collections import deque

from guest.stack.device import abi
from guest.stack.device.ring import RingDevice

from .errors import TrafficError

HELLO, HELLO_ACK, DATA, ACK, FIN, NAK = 1, 2, 3, 4, 5, 6
#: kind, port, connection id, frame number, next frame expected from the peer, payload length,
#: then a CRC-32 of all that and the payload.
HEADER = struct.Struct("!BxHIIIHI")
_CRC_AT = HEADER.size - 4
_AT = abi.ETH_HLEN
_BROADCAST = b"\xff" * 6
_ETHERTYPE = abi.ETH_P_EXPERIMENTAL.to_bytes(2, "big")

#: Frames in flight per direction (the TCP paths' 256 KiB buffers hold about 180).
WINDOW = 128
ACK_EVERY = 16
ACK_DELAY_S = 0.002
RTO_S = 0.2
HELLO_EVERY_S = 0.2
#: How long `connect` asks before giving up (the traffic tool retries a refused connect).
CONNECT_S = 1.0
#: How long `close` waits for the peer to acknowledge what is still in flight.
LINGER_S = 2.0
#: IP and TCP headers with timestamps: what a TCP segment on the same MTU does not carry.
_TCP_OVERHEAD = 20 + 20 + 12


def parse(frame: memoryview) -> tuple[tuple[int, ...], memoryview] | None:
    """A frame of ours: (kind, port, connection, number, ACK) and the payload; None for
    anything else, or a frame whose CRC does not match (damaged on the way)."""
    if len(frame) < _AT + HEADER.size or frame[12:14] != _ETHERTYPE:
        return None
    kind, port, conn_id, seq, ack, length, crc = HEADER.unpack_from(frame, _AT)
    start = _AT + HEADER.size
    payload = frame[start : start + length]
    if len(payload) != length or crc != zlib.crc32(payload, zlib.crc32(frame[_AT : _CRC_AT + _AT])):
        return None
    return (kind, port, conn_id, seq, ack), payload


class FloorConnection:
    """One direction each way over the device: the sender's window and the receiver's queue."""

    def __init__(
        self, dev: RingDevice, port: int, conn_id: int, peer_mac: bytes, timeout: float
    ) -> None:
        self.dev = dev
        self.port = port
        self.conn_id = conn_id
        self.timeout = timeout
        self.mss = dev.mtu - _TCP_OVERHEAD
        self._prefix = peer_mac + dev.mac + _ETHERTYPE
        self.peer_mac = peer_mac
        # Sending: frames [snd_una, snd_nxt) are in flight, kept for resending.
        self.snd_una = 0
        self.snd_nxt = 0
        self._unacked: deque[tuple[int, int, bytes]] = deque()  # kind, number, payload
        self._recovered: int | None = None  # the frame a NAK already made us go back to
        self._progress_at = self._heard_at = time.monotonic()
        self._fin_sent = False
        # Receiving.
        self.rcv_nxt = 0
        self._rx = bytearray()
        self._rx_at = 0
        self._eof = False
        self._owed = 0  # in-order frames not yet acknowledged
        self._ack_due: float | None = None
        self._nak_for: int | None = None  # the gap a NAK was sent for
        self._ahead: dict[int, tuple[int, bytes]] = {}  # frames past a gap: kind, payload
        self.counters = {"frames_out": 0, "frames_in": 0, "resent": 0, "timeouts": 0, "bad": 0}
        self._poll = select.poll()
        self._poll.register(dev.fileno(), select.POLLIN)

    # ------------------------------------------------------------------ the Stream interface

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        mss = self.mss
        for at in range(0, len(view), mss):
            while self.snd_nxt - self.snd_una >= WINDOW:
                self._pump(self._wait())
            self._send_new(DATA, view[at : at + mss])
        self.dev.flush()
        self._pump(0.0)

    def recv_into(self, buf: memoryview) -> int:
        while self._rx_at >= len(self._rx) and not self._eof:
            self._pump(self._wait())
        avail = len(self._rx) - self._rx_at
        if not avail:
            return 0
        n = min(avail, len(buf))
        buf[:n] = self._rx[self._rx_at : self._rx_at + n]
        self._rx_at += n
        if self._rx_at == len(self._rx):
            self._rx.clear()
            self._rx_at = 0
        return n

    def shutdown_write(self) -> None:
        if not self._fin_sent:
            self._fin_sent = True
            self._send_new(FIN, b"")
            self.dev.flush()

    def close(self) -> None:
        """End our direction (as closing a socket sends its FIN) and wait, bounded, until
        everything we sent is acknowledged."""
        self.shutdown_write()
        end = time.monotonic() + LINGER_S
        while self.snd_una < self.snd_nxt and time.monotonic() < end:
            try:
                self._pump(min(self._wait(), max(end - time.monotonic(), 0.0)))
            except TimeoutError:
                break
        if self._owed:
            self._send_ack()
            self.dev.flush()

    # ------------------------------------------------------------------ frames

    def frame(self, kind: int, seq: int, payload: bytes | memoryview = b"") -> bytes:
        """A frame of ours. The CRC is what an end-to-end check costs at the least: without
        one a frame damaged before the NIC computed its FCS (netem's corrupt does that) would
        be taken as good, where TCP's checksum drops it."""
        fields = (kind, self.port, self.conn_id, seq, self.rcv_nxt, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(HEADER.pack(*fields, 0)[:_CRC_AT]))
        return self._prefix + HEADER.pack(*fields, crc) + payload

    def _send_new(self, kind: int, payload: bytes | memoryview) -> None:
        seq = self.snd_nxt
        frame = self.frame(kind, seq, payload)
        if self.snd_una == seq:
            self._progress_at = time.monotonic()
        self.snd_nxt = seq + 1
        self._unacked.append((kind, seq, bytes(payload)))
        self._transmit(frame)
        self._owed = 0  # the frame carries our ACK
        self._ack_due = None

    def _transmit(self, frame: bytes) -> None:
        dev = self.dev
        while not dev.send(frame):
            dev.flush()
            self._poll.poll(1)
        self.counters["frames_out"] += 1

    def _send_ack(self) -> None:
        self._transmit(self.frame(ACK, self.snd_nxt))
        self._owed = 0
        self._ack_due = None

    def _resend(self) -> None:
        """The first unacknowledged frame again, with the ACK field brought up to date."""
        self._transmit(self.frame(*self._unacked[0]))
        self.counters["resent"] += 1
        self._progress_at = time.monotonic()
        self._owed = 0
        self._ack_due = None

    # ------------------------------------------------------------------ the loop

    def _wait(self) -> float:
        """Seconds until a timer of ours is due (at most the idle timeout)."""
        now = time.monotonic()
        wait = self.timeout
        if self.snd_una < self.snd_nxt:
            wait = min(wait, self._progress_at + RTO_S - now)
        if self._ack_due is not None:
            wait = min(wait, self._ack_due - now)
        return max(wait, 0.0)

    def _pump(self, wait: float) -> None:
        """Wait up to `wait` s for frames, take them, run the timers, flush what is queued."""
        dev = self.dev
        if wait > 0:
            self._poll.poll(int(wait * 1000) + 1)
        frames = dev.recv_batch(256)
        for frame in frames:
            self._take(frame)
        now = time.monotonic()
        if frames:
            self._heard_at = now
        elif now - self._heard_at >= self.timeout:
            raise TimeoutError(f"floor: nothing from the peer for {self.timeout:g} s")
        if self.snd_una < self.snd_nxt and now - self._progress_at >= RTO_S:
            self.counters["timeouts"] += 1
            self._recovered = self.snd_una
            self._resend()
        if self._owed:
            if self._owed >= ACK_EVERY or (self._ack_due is not None and now >= self._ack_due):
                self._send_ack()
            elif self._ack_due is None:
                self._ack_due = now + ACK_DELAY_S
        dev.flush()

    def _take(self, frame: memoryview) -> None:
        got = parse(frame)
        if got is None:
            self.counters["bad"] += 1
            return
        (kind, port, conn_id, seq, ack), payload = got
        if conn_id != self.conn_id or port != self.port or kind in (HELLO, HELLO_ACK):
            if kind == HELLO and conn_id == self.conn_id:  # our HELLO_ACK was lost
                self._transmit(self.frame(HELLO_ACK, 0))
            return
        self.counters["frames_in"] += 1
        self._on_ack(ack, kind == NAK)
        if kind in (ACK, NAK):
            return
        if seq != self.rcv_nxt:
            if seq > self.rcv_nxt:
                if seq < self.rcv_nxt + WINDOW:
                    self._ahead[seq] = (kind, bytes(payload))
                self._nak_gap()
            else:
                self._owed += 1  # a resend we have: our ACK may have been lost
            return
        self._deliver(kind, payload)
        ahead = self._ahead
        if ahead:
            while self.rcv_nxt in ahead:
                self._deliver(*ahead.pop(self.rcv_nxt))
            if ahead:
                self._nak_gap()  # the next gap, known already

    def _nak_gap(self) -> None:
        """Ask for the frame missing at RCV.NXT, once per gap: the frames behind it are on
        their way, and each would otherwise ask again."""
        if self._nak_for != self.rcv_nxt:
            self._nak_for = self.rcv_nxt
            self._transmit(self.frame(NAK, self.snd_nxt))

    def _deliver(self, kind: int, payload: bytes | memoryview) -> None:
        self.rcv_nxt += 1
        if kind == FIN:
            self._eof = True
            self._send_ack()
            return
        self._rx += payload
        self._owed += 1

    def _on_ack(self, ack: int, nak: bool) -> None:
        if ack > self.snd_una:
            for _ in range(min(ack, self.snd_nxt) - self.snd_una):
                self._unacked.popleft()
            self.snd_una = min(ack, self.snd_nxt)
            self._progress_at = time.monotonic()
        if nak and ack == self.snd_una < self.snd_nxt and self._recovered != ack:
            self._recovered = ack  # once per frame; a resend lost again waits for the RTO
            self._resend()


class FloorListener:
    def __init__(self, provider: FloorProvider, port: int, timeout: float) -> None:
        self.provider = provider
        self.port = port
        self.timeout = timeout

    def accept(self) -> FloorConnection:
        dev = self.provider.device()
        poller = select.poll()
        poller.register(dev.fileno(), select.POLLIN)
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            poller.poll(100)
            for frame in dev.recv_batch(64):
                got = parse(frame)
                if got is None:
                    continue
                kind, port, conn_id, *_ = got[0]
                if kind == HELLO and port == self.port:
                    peer = bytes(frame[6:12])
                    conn = FloorConnection(dev, port, conn_id, peer, self.timeout)
                    conn._transmit(conn.frame(HELLO_ACK, 0))
                    dev.flush()
                    self.provider.conn = conn
                    return conn
        raise TimeoutError(f"floor: no client on port {self.port} for {self.timeout:g} s")

    def close(self) -> None:
        pass  # the connection keeps the device; the provider closes it


class FloorProvider:
    """The traffic tool's `--path floor`: a ring on `--iface`, one connection per process."""

    name = "floor"

    def __init__(self, args: argparse.Namespace) -> None:
        if not getattr(args, "iface", None):
            raise TrafficError("--path floor needs --iface (the NIC of the link to the peer)")
        self.iface: str = args.iface
        self._dev: RingDevice | None = None
        self.conn: FloorConnection | None = None

    def device(self) -> RingDevice:
        if self._dev is None:
            self._dev = RingDevice(self.iface, version=2, protocol=abi.ETH_P_EXPERIMENTAL)
        return self._dev

    def connect(self, peer: str, port: int, *, timeout: float, nodelay: bool) -> FloorConnection:
        dev = self.device()
        conn_id = int.from_bytes(os.urandom(4), "big") or 1
        hello = FloorConnection(dev, port, conn_id, _BROADCAST, timeout)
        poller = select.poll()
        poller.register(dev.fileno(), select.POLLIN)
        end = time.monotonic() + CONNECT_S
        while time.monotonic() < end:
            hello._transmit(hello.frame(HELLO, 0))
            dev.flush()
            asked = time.monotonic()
            while time.monotonic() - asked < HELLO_EVERY_S:
                poller.poll(int(HELLO_EVERY_S * 1000))
                for frame in dev.recv_batch(64):
                    got = parse(frame)
                    if got is None:
                        continue
                    kind, got_port, got_id, *_ = got[0]
                    if kind == HELLO_ACK and got_port == port and got_id == conn_id:
                        conn = FloorConnection(dev, port, conn_id, bytes(frame[6:12]), timeout)
                        self.conn = conn
                        return conn
        # With its errno, so that the traffic tool retries it as it does a kernel refusal.
        raise ConnectionRefusedError(
            errno.ECONNREFUSED, f"floor: no server answered on port {port} ({peer})"
        )

    def listen(self, bind: str, port: int, *, timeout: float, nodelay: bool) -> FloorListener:
        return FloorListener(self, port, timeout)

    def close(self) -> dict | None:
        """Leave the device; the connection's counters and the device's, for the record."""
        dev, self._dev = self._dev, None
        if dev is None:
            return None
        stats = dev.stats.as_dict()
        dev.close()
        counters = dict(self.conn.counters) if self.conn is not None else {}
        return {"floor": counters, "device": stats}

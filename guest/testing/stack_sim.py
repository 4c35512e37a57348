"""Two `NetStack`s on an in-memory Ethernet with a fake clock, for tests and benchmarks.

Borrowed from `tcp_sim`, one layer down: the links carry whole frames, so ARP, IPv4,
checksums and demultiplexing are exercised as on a wire. Time jumps to the next event (a frame
arrival or a stack's `next_timeout`), so minutes of simulated timers cost nothing. Loss,
duplication, reordering and corruption come from a seeded `random.Random`: every run repeats.

The loop follows `NetStack`'s calling convention exactly (deliver a frame, `poll`, hand events
to the applications, `poll` again), so it doubles as a reference for a real stack's main loop.
Applications are callbacks per host: `Host.on_event(handler)` receives every event with the
host; `StreamApp` is a ready-made TCP bulk sender/receiver.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from guest.stack.core.events import (
    TERMINAL_EVENTS,
    Accepted,
    Connected,
    PeerClosed,
    Readable,
    StackEvent,
    Writable,
)
from guest.stack.core.gso import segment_tso
from guest.stack.core.netstack import NetStack, TsoFrame
from guest.stack.core.offload import finish_checksums
from guest.testing.impairment import ImpairedLink

#: The two hosts `make_network` builds (RFC 2544 benchmarking addresses, as the testbed uses).
MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")
IP_A = "198.18.1.1"
IP_B = "198.18.1.2"


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One direction of the link."""

    #: One-way propagation delay, seconds.
    delay: float = 0.0002
    #: Bits per second (serialization delay and queueing); None: infinitely fast.
    bandwidth: float | None = 1e9
    #: Drop-tail queue limit in bytes (with a bandwidth); None: unbounded.
    queue_bytes: int | None = None
    #: Per-frame probabilities.
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    #: Reordered and duplicated frames arrive up to this much later.
    reorder_delay: float = 0.002
    #: Drop every frame for which this returns True (targeted loss in tests).
    drop_if: Callable[[bytearray], bool] | None = None


class Link(ImpairedLink):
    """A link carrying whole Ethernet frames: a corrupted frame arrives with one bit flipped,
    for the receiving stack's checksums to catch."""

    def transmit(self, frame: bytearray, now: float) -> list[tuple[float, bytearray]]:
        cfg = self.config
        if cfg.drop_if is not None and cfg.drop_if(frame):
            self.stats.offered += 1
            self.stats.lost += 1
            return []
        delivered = [frame]

        def flip_a_bit() -> bool:
            damaged = bytearray(frame)
            i = self.rng.randrange(len(damaged))
            damaged[i] ^= 1 << self.rng.randrange(8)
            delivered[0] = damaged
            return True

        # + preamble, FCS and inter-frame gap on the wire
        times = self.schedule(len(frame) + 24, now, flip_a_bit)
        return [(t, delivered[0]) for t in times]


EventHandler = Callable[["Host", StackEvent], None]


class Host:
    """A stack plus the application callbacks that react to its events."""

    def __init__(self, net: Network, stack: NetStack) -> None:
        self.net = net
        self.stack = stack
        self.handlers: list[EventHandler] = []
        self.log: list[StackEvent] = []
        #: TCP handle -> app; listener handle -> factory for accepted connections.
        self.apps: dict[int, StreamApp] = {}
        self.servers: dict[int, Callable[[], StreamApp]] = {}

    def on_event(self, handler: EventHandler) -> None:
        self.handlers.append(handler)

    def serve(self, port: int, factory: Callable[[], StreamApp], backlog: int = 128) -> int:
        """Listen on `port`; every accepted connection gets an app from `factory`."""
        handle = self.stack.tcp_listen(port, backlog)
        self.servers[handle] = factory
        return handle

    def connect(self, remote_ip: int | str, port: int, app: StreamApp) -> int:
        handle = self.stack.tcp_connect(remote_ip, port, self.net.now)
        app.attach(self.stack, handle)
        self.apps[handle] = app
        return handle

    def dispatch(self, events: list[StackEvent]) -> None:
        stack = self.stack
        for ev in events:
            self.log.append(ev)
            for handler in self.handlers:
                handler(self, ev)
            if type(ev) is Accepted and ev.handle in self.servers:
                factory = self.servers[ev.handle]
                while (h := stack.tcp_accept(ev.handle)) is not None:
                    app = factory()
                    app.attach(stack, h)
                    self.apps[h] = app
                    app.handle_event(Connected(h))
                continue
            app = self.apps.get(ev.handle)
            if app is not None:
                app.handle_event(ev)


class StreamApp:
    """Bulk transfer on one connection: write `data`, half-close, read until EOF.

    `received` collects what the peer sent; `done` once EOF was seen and everything written.
    """

    def __init__(self, data: bytes = b"", *, write_size: int = 65536, read: bool = True):
        self.data = memoryview(data)
        self.write_size = write_size
        self.read = read
        self.offset = 0
        self.received = bytearray()
        self.stack: NetStack | None = None
        self.handle = 0
        self.connected = False
        self.eof = False
        self.shut = False
        self.terminal: StackEvent | None = None
        self.events: list[StackEvent] = []

    @property
    def done(self) -> bool:
        return self.eof and self.shut

    def digest(self) -> str:
        return hashlib.sha256(self.received).hexdigest()

    def attach(self, stack: NetStack, handle: int) -> None:
        self.stack = stack
        self.handle = handle

    def handle_event(self, ev: StackEvent) -> None:
        self.events.append(ev)
        kind = type(ev)
        if kind is Connected:
            self.connected = True
            self._write()
        elif kind is Readable:
            self._read()
        elif kind is Writable:
            self._write()
        elif kind is PeerClosed:
            self._read()
            self.eof = True
        elif isinstance(ev, TERMINAL_EVENTS):
            self.terminal = ev

    def _read(self) -> None:
        if not self.read or self.terminal is not None or self.stack is None:
            return
        while data := self.stack.tcp_recv(self.handle):
            self.received += data

    def _write(self) -> None:
        stack = self.stack
        if stack is None or self.shut or self.terminal is not None:
            return
        data = self.data
        while self.offset < len(data):
            chunk = data[self.offset : self.offset + self.write_size]
            n = stack.tcp_send(self.handle, chunk)
            self.offset += n
            if n < len(chunk):
                return  # wait for Writable
        self.shut = True
        stack.tcp_shutdown(self.handle)


@dataclass(slots=True)
class RunStats:
    steps: int = 0  # loop iterations (a time at which frames arrived or a timer fired)
    frames: int = 0  # frames delivered


class Network:
    """Two hosts on one point-to-point Ethernet (a link per direction), one event heap."""

    def __init__(
        self,
        a: NetStack,
        b: NetStack,
        forward: LinkConfig | None = None,
        backward: LinkConfig | None = None,
        *,
        seed: int = 0,
        now: float = 0.0,
    ) -> None:
        self.now = now
        self.rng = random.Random(seed)
        self.a = Host(self, a)
        self.b = Host(self, b)
        fwd = forward or LinkConfig()
        self.links = {
            id(self.a): Link(fwd, self.rng),
            id(self.b): Link(backward or fwd, self.rng),
        }
        self.stats = RunStats()
        #: Every frame put on the wire, as (time, sender stack, frame), when `capture` is set.
        self.capture = False
        self.captured: list[tuple[float, NetStack, bytes]] = []
        self._heap: list[tuple[float, int, Host, bytearray]] = []
        self._seq = 0

    @property
    def hosts(self) -> tuple[Host, Host]:
        return self.a, self.b

    def peer(self, host: Host) -> Host:
        return self.b if host is self.a else self.a

    def inject(self, dst: Host, frame: bytes | bytearray, delay: float = 0.0) -> None:
        """Put a hand-made frame on the wire towards `dst`."""
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, dst, bytearray(frame)))

    def flush(self) -> None:
        """Poll both stacks, transmit, hand events to the apps, until nothing changes."""
        for _ in range(100):
            busy = False
            for host in (self.a, self.b):
                frames = host.stack.poll(self.now)
                if frames:
                    busy = True
                    self._send(host, frames)
                events = host.stack.events()
                if events:
                    busy = True
                    host.dispatch(events)
            if not busy:
                return
        raise RuntimeError("stacks did not settle")

    def _send(self, host: Host, frames: list[bytearray]) -> None:
        link = self.links[id(host)]
        dst = self.peer(host)
        now = self.now
        for frame in frames:
            if self.capture:
                self.captured.append((now, host.stack, bytes(frame)))
            if type(frame) is TsoFrame:
                pieces: tuple[bytearray, ...] | list[bytearray] = segment_tso(frame, frame.mss)
            else:
                if host.stack.tx_checksum_offload:
                    frame = bytearray(frame)
                    finish_checksums(frame)  # what the NIC would do
                pieces = (frame,)
            for piece in pieces:
                for arrival, f in link.transmit(piece, now):
                    self._seq += 1
                    heapq.heappush(self._heap, (arrival, self._seq, dst, f))

    def run(
        self,
        *,
        until: float = math.inf,
        stop: Callable[[], bool] | None = None,
        max_steps: int = 5_000_000,
    ) -> bool:
        """Advance time until `stop()` holds (returns True) or nothing is left / `until`."""
        heap = self._heap
        a, b = self.a, self.b
        self.flush()
        while self.stats.steps < max_steps:
            if stop is not None and stop():
                return True
            t = heap[0][0] if heap else math.inf
            for host in (a, b):
                timeout = host.stack.next_timeout()
                if timeout is not None and timeout < t:
                    t = timeout
            if t == math.inf or t > until:
                if until != math.inf:
                    self.now = max(self.now, until)
                return stop is not None and stop()
            self.now = max(self.now, t)
            self.stats.steps += 1
            while heap and heap[0][0] <= self.now:
                _, _, dst, frame = heapq.heappop(heap)
                self.stats.frames += 1
                dst.stack.receive_frame(frame, self.now)
            self.flush()
        raise RuntimeError("simulation exceeded max_steps")

    def advance(self, seconds: float) -> None:
        """Run for `seconds` of simulated time."""
        self.run(until=self.now + seconds)


def make_network(
    forward: LinkConfig | None = None,
    backward: LinkConfig | None = None,
    *,
    seed: int = 0,
    a: dict[str, object] | None = None,
    b: dict[str, object] | None = None,
    **common: object,
) -> Network:
    """Hosts A (198.18.1.1) and B (198.18.1.2) on one /24; `common` are `NetStack` keyword
    arguments for both, `a`/`b` for one side only. Stacks run with `strict=True`."""
    kw_a = {"secret": b"host-a", "strict": True, **common, **(a or {})}
    kw_b = {"secret": b"host-b", "strict": True, **common, **(b or {})}
    stack_a = NetStack(MAC_A, IP_A + "/24", **kw_a)  # type: ignore[arg-type]
    stack_b = NetStack(MAC_B, IP_B + "/24", **kw_b)  # type: ignore[arg-type]
    return Network(stack_a, stack_b, forward, backward, seed=seed)

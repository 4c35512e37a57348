"""An event-driven network simulator for the sans-I/O TCP: fake clock, lossy links, tiny hosts.

Used by the unit tests and by benchmarks that want protocol behaviour without VMs. Time jumps
straight to the next event (a segment arrival or a connection timer), so a simulated minute
of RTO backoff costs nothing. Randomness (loss, reordering, duplication, corruption) comes
from a seeded `random.Random`, so every run is reproducible; the TCP code itself stays free of
randomness and clocks.

`SimHost` doubles as a reference for how a stack drives the state machine: demultiplex by
4-tuple, fall back to the listener, answer strays with `reset_for`, then `poll` and transmit.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from guest.stack.tcp.config import TcpConfig
from guest.stack.tcp.connection import TcpConnection
from guest.stack.tcp.events import TERMINAL_TCP_EVENTS, TcpEvent, TcpPeerClosed
from guest.stack.tcp.listener import TcpListener
from guest.stack.tcp.reset import reset_for
from guest.stack.tcp.state import TcpState
from guest.stack.tcp.stats import TcpStats
from guest.stack.wire.tcp import TcpRepr
from guest.testing.impairment import ImpairedLink, LinkConfig, LinkStats

Endpoint = tuple[Hashable, int]


def _lose() -> bool:
    return False


class Link(ImpairedLink):
    """A link carrying TCP segments; a corrupted segment is lost."""

    def transmit(self, seg: TcpRepr, now: float) -> list[float]:
        """Arrival times of `seg` (empty when it is lost or corrupted)."""
        return self.schedule(len(seg.payload) + self.config.header_bytes, now, _lose)


class StreamApp:
    """A scripted application on one connection: writes `data` in chunks, reads everything.

    `write_size` returns the size of the next write (fixed sizes, or random ones for property
    tests). After all data is accepted the app closes if `close_when_done`.
    """

    def __init__(
        self,
        data: bytes = b"",
        *,
        write_size: Callable[[], int] | int = 65536,
        close_when_done: bool = True,
        read: bool = True,
    ) -> None:
        self.data = memoryview(data)
        self.offset = 0
        self.write_size = write_size if callable(write_size) else (lambda: write_size)
        self.close_when_done = close_when_done
        self.read = read
        self.received = bytearray()
        self.events: list[TcpEvent] = []
        self.eof = False
        self.terminal: TcpEvent | None = None
        self.closed_called = False

    @property
    def done(self) -> bool:
        """Finished: peer's EOF seen and the connection reached its terminal event."""
        return self.terminal is not None

    def pump(self, conn: TcpConnection) -> None:
        """React to the connection: drain events, read, write, close."""
        for ev in conn.events():
            self.events.append(ev)
            if isinstance(ev, TcpPeerClosed):
                self.eof = True
            elif isinstance(ev, TERMINAL_TCP_EVENTS):
                self.terminal = ev
        if self.read and conn.recv_available:
            self.received += conn.recv()
        if self.terminal is not None or self.closed_called:
            return
        data = self.data
        while self.offset < len(data):
            n = max(1, self.write_size())
            taken = conn.send(data[self.offset : self.offset + n])
            self.offset += taken
            if taken < n and self.offset < len(data):
                break
        if (
            self.offset >= len(data)
            and self.close_when_done
            and conn.state is not TcpState.SYN_SENT  # closing there would abandon the open
        ):
            self.closed_called = True
            conn.close()


class SimHost:
    """A host with a connection table, listeners and one `StreamApp` per connection."""

    def __init__(self, sim: Simulator, addr: Hashable) -> None:
        self.sim = sim
        self.addr = addr
        self.connections: dict[tuple[Endpoint, Endpoint], TcpConnection] = {}
        self.apps: dict[tuple[Endpoint, Endpoint], StreamApp] = {}
        self.finished: list[tuple[TcpConnection, StreamApp]] = []
        self.listeners: dict[Endpoint, tuple[TcpListener, Callable[[], StreamApp]]] = {}
        self.resets_sent = 0

    def listen(
        self,
        port: int,
        app_factory: Callable[[], StreamApp],
        config: TcpConfig | None = None,
        *,
        isn: int = 0x10000000,
        backlog: int = 16,
    ) -> TcpListener:
        """Open a listener; every accepted connection gets an app from `app_factory`."""
        local = (self.addr, port)
        listener = TcpListener(local, config, isn=lambda _l, _r, _t: isn, backlog=backlog)
        self.listeners[local] = (listener, app_factory)
        return listener

    def connect(
        self,
        port: int,
        remote: Endpoint,
        app: StreamApp,
        config: TcpConfig | None = None,
        *,
        isn: int = 0x20000000,
        ts_offset: int = 0,
    ) -> TcpConnection:
        """Active open from local `port` to `remote`."""
        local = (self.addr, port)
        conn = TcpConnection(local, remote, config, isn=isn, ts_offset=ts_offset)
        self.connections[(local, remote)] = conn
        self.apps[(local, remote)] = app
        conn.connect()
        self.service(conn, self.sim.now)
        return conn

    def deliver(self, src: Hashable, seg: TcpRepr, now: float) -> None:
        """Demultiplex an arriving segment (what the real stack does)."""
        local = (self.addr, seg.dst_port)
        remote = (src, seg.src_port)
        conn = self.connections.get((local, remote))
        if conn is not None:
            conn.receive_segment(seg, now)
            self.service(conn, now)
            return
        entry = self.listeners.get(local)
        if entry is not None:
            listener, factory = entry
            result = listener.receive_segment(seg, remote, now)
            if result.reply is not None:
                self.resets_sent += 1
                self.sim.send(self.addr, src, result.reply, now)
            if result.connection is not None:
                self.connections[(local, remote)] = result.connection
                self.apps[(local, remote)] = factory()
                self.service(result.connection, now)
            return
        rst = reset_for(seg)
        if rst is not None:
            self.resets_sent += 1
            self.sim.send(self.addr, src, rst, now)

    def service(self, conn: TcpConnection, now: float) -> None:
        """Let the app react, then transmit what the connection wants to send."""
        key = (conn.local, conn.remote)
        app = self.apps[key]
        app.pump(conn)
        for seg in conn.poll(now):
            self.sim.send(self.addr, conn.remote[0], seg, now)
        app.pump(conn)
        if app.terminal is not None:
            # Terminal event: the stack forgets the connection (later strays get RSTs).
            del self.connections[key]
            del self.apps[key]
            self.finished.append((conn, app))

    def next_timer(self) -> tuple[float, TcpConnection | None]:
        """Earliest timer over all connections."""
        best = math.inf
        which = None
        for conn in self.connections.values():
            t = conn.next_timeout()
            if t is not None and t < best:
                best = t
                which = conn
        return best, which


class Simulator:
    """Two or more hosts joined by per-direction links, driven by a single event heap."""

    def __init__(
        self,
        forward: LinkConfig | None = None,
        backward: LinkConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._default_links = (forward or LinkConfig(), backward or forward or LinkConfig())
        self.hosts: dict[Hashable, SimHost] = {}
        self.links: dict[tuple[Hashable, Hashable], Link] = {}
        self._heap: list[tuple[float, int, Hashable, Hashable, TcpRepr]] = []
        self._counter = 0
        self.steps = 0
        self.segments_delivered = 0

    def add_host(self, addr: Hashable) -> SimHost:
        """A new host; the first two hosts are joined by the forward/backward links."""
        host = SimHost(self, addr)
        for other in self.hosts:
            if len(self.links) < 2:
                self.links[(other, addr)] = Link(self._default_links[0], self.rng)
                self.links[(addr, other)] = Link(self._default_links[1], self.rng)
            else:
                self.links[(other, addr)] = Link(LinkConfig(), self.rng)
                self.links[(addr, other)] = Link(LinkConfig(), self.rng)
        self.hosts[addr] = host
        return host

    def send(self, src: Hashable, dst: Hashable, seg: TcpRepr, now: float) -> None:
        """Put a segment on the link from `src` to `dst`."""
        for arrival in self.links[(src, dst)].transmit(seg, now):
            self._counter += 1
            heapq.heappush(self._heap, (arrival, self._counter, src, dst, seg))

    def run(
        self,
        *,
        until: float = math.inf,
        stop: Callable[[], bool] | None = None,
        max_steps: int = 50_000_000,
    ) -> bool:
        """Process events until `stop()` holds (True), or nothing is left / `until` passed."""
        heap = self._heap
        hosts = list(self.hosts.values())
        while self.steps < max_steps:
            if stop is not None and stop():
                return True
            t_seg = heap[0][0] if heap else math.inf
            t_timer = math.inf
            timer_host: SimHost | None = None
            timer_conn: TcpConnection | None = None
            for host in hosts:
                t, conn = host.next_timer()
                if t < t_timer:
                    t_timer, timer_host, timer_conn = t, host, conn
            t = min(t_seg, t_timer)
            if t == math.inf or t > until:
                return stop is not None and stop()
            self.now = max(self.now, t)
            self.steps += 1
            if t_seg <= t_timer:
                _, _, src, dst, seg = heapq.heappop(heap)
                self.segments_delivered += 1
                self.hosts[dst].deliver(src, seg, self.now)
            elif timer_host is not None and timer_conn is not None:
                timer_host.service(timer_conn, self.now)
        raise RuntimeError("simulation exceeded max_steps")


@dataclass(slots=True)
class TransferResult:
    """Outcome of `run_transfer`."""

    client_received: bytes
    server_received: bytes
    client_stats: TcpStats
    server_stats: TcpStats
    client_events: list[TcpEvent]
    server_events: list[TcpEvent]
    forward: LinkStats
    backward: LinkStats
    sim_time: float
    wall_time: float
    segments: int  # segments delivered by the links
    completed: bool
    extra: dict[str, object] = field(default_factory=dict)


def run_transfer(
    client_data: bytes,
    server_data: bytes,
    *,
    forward: LinkConfig | None = None,
    backward: LinkConfig | None = None,
    client_config: TcpConfig | None = None,
    server_config: TcpConfig | None = None,
    client_write: Callable[[], int] | int = 65536,
    server_write: Callable[[], int] | int = 65536,
    seed: int = 0,
    time_limit: float = 7200.0,
    client_isn: int = 0x20000000,
    server_isn: int = 0x10000000,
    client_ts_offset: int = 0,
) -> TransferResult:
    """Open a connection, send `client_data` and `server_data` both ways at once, close both
    sides, and run until both connections reached a terminal event (or `time_limit`)."""
    sim = Simulator(forward, backward, seed=seed)
    client = sim.add_host("10.0.0.1")
    server = sim.add_host("10.0.0.2")
    server_apps: list[StreamApp] = []

    def server_app() -> StreamApp:
        app = StreamApp(server_data, write_size=server_write)
        server_apps.append(app)
        return app

    server.listen(80, server_app, server_config, isn=server_isn)
    client_app = StreamApp(client_data, write_size=client_write)
    conn = client.connect(
        40000,
        ("10.0.0.2", 80),
        client_app,
        client_config,
        isn=client_isn,
        ts_offset=client_ts_offset,
    )

    def finished() -> bool:
        return client_app.done and bool(server_apps) and server_apps[0].done

    started = time.perf_counter()
    completed = sim.run(until=time_limit, stop=finished)
    wall = time.perf_counter() - started
    server_conn = next(
        (c for c, _ in server.finished), next(iter(server.connections.values()), None)
    )
    return TransferResult(
        client_received=bytes(client_app.received),
        server_received=bytes(server_apps[0].received) if server_apps else b"",
        client_stats=conn.stats,
        server_stats=server_conn.stats if server_conn is not None else TcpStats(),
        client_events=client_app.events,
        server_events=server_apps[0].events if server_apps else [],
        forward=sim.links[("10.0.0.1", "10.0.0.2")].stats,
        backward=sim.links[("10.0.0.2", "10.0.0.1")].stats,
        sim_time=sim.now,
        wall_time=wall,
        segments=sim.segments_delivered,
        completed=completed,
    )

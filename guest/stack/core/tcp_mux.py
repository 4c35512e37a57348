"""TCP demultiplexing: 4-tuple -> `TcpConnection`, port -> `TcpListener`, strays -> RST.

The stack has one address, so a connection is keyed by (remote ip, remote port, local port): a
tuple of three ints whose hash and lookup are one dict probe per segment. A segment matching no
connection goes to the listener of its port, and one matching neither is answered with
`reset_for` (RFC 9293 3.10.7.1), which is how a connection attempt to a closed port is refused.

Which connections need work is tracked rather than searched for, so the cost of `poll` follows
the traffic, not the number of connections:
* a connection that received a segment or an application call is marked *dirty*;
* each connection's next timer sits in one heap. Entries are lazy: a deadline that moves later
  (the RTO restarts on every ACK) is not re-pushed; its old, earlier entry pops, the connection
  is polled (a cheap no-op), and the real deadline is pushed then. So a busy connection costs a
  heap push per RTO, not per segment.

Socket lifetime follows BSD sockets. A closed handle's connection lives on as an *orphan* until
it finishes the FIN exchange (unread data on close aborts it with an RST, as Linux does, and a
FIN-WAIT-2 orphan is cut after `fin_timeout`, Linux's tcp_fin_timeout). Passively opened
connections have no handle until `accept`; their events wait so that the handle sees them.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import itertools
from collections.abc import Callable
from typing import Final

from guest.stack import tcp
from guest.stack.tcp import (
    IsnGenerator,
    TcpClosed,
    TcpConfig,
    TcpConnected,
    TcpConnection,
    TcpConnectionFailed,
    TcpDataReceived,
    TcpEvent,
    TcpListener,
    TcpPeerClosed,
    TcpReset,
    TcpSendSpaceAvailable,
    TcpState,
    reset_for,
)
from guest.stack.tcp.stats import TCP_COUNTERS
from guest.stack.tcp.syncookies import SynCookies
from guest.stack.wire.ipv4 import Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .counters import Counters
from .events import (
    Accepted,
    Closed,
    Connected,
    ConnectionFailed,
    EventQueue,
    PeerClosed,
    Reset,
    Writable,
)
from .ratelimit import TokenBucket

EPHEMERAL_FIRST: Final = 32768  # Linux ip_local_port_range
EPHEMERAL_LAST: Final = 60999
DEFAULT_FIN_TIMEOUT: Final = 60.0  # Linux tcp_fin_timeout

Key = tuple[int, int, int]  # (remote ip, remote port, local port)
#: `emit(sock, segments, now)`: the stack turns segments into frames.
EmitFunction = Callable[["TcpSocket", list[TcpRepr], float], None]

_CLOSED = TcpState.CLOSED
_FIN_WAIT_2 = TcpState.FIN_WAIT_2


class TcpSocket:
    """One connection as the stack sees it: the state machine plus demux and output state."""

    __slots__ = (
        "conn",
        "deadline",
        "early",
        "fail_reason",
        "handle",
        "in_table",
        "ip",
        "key",
        "listener",
        "next_hop",
        "orphan_deadline",
    )

    def __init__(self, conn: TcpConnection, key: Key, handle: int | None) -> None:
        self.conn = conn
        self.key = key
        self.handle = handle
        #: Listener that created it, until accepted.
        self.listener: TcpListen | None = None
        #: Events that arrived before `accept` gave the connection a handle.
        self.early: list[TcpEvent] = []
        #: Overrides a plain `Closed` with `ConnectionFailed` (ICMP hard error while opening).
        self.fail_reason: str | None = None
        self.in_table = True
        #: Earliest timer entry this socket has in the heap.
        self.deadline: float | None = None
        self.orphan_deadline: float | None = None
        #: Output state the stack fills in on first transmission (header template, route).
        self.ip: Ipv4Repr | None = None
        self.next_hop: int | None = None

    @property
    def remote_ip(self) -> int:
        return self.key[0]

    @property
    def remote_port(self) -> int:
        return self.key[1]

    @property
    def local_port(self) -> int:
        return self.key[2]


class TcpListen:
    """A listening port and its not-yet-accepted connections."""

    __slots__ = ("children", "handle", "listener", "port")

    def __init__(self, handle: int, port: int, listener: TcpListener) -> None:
        self.handle = handle
        self.port = port
        self.listener = listener
        self.children: dict[TcpConnection, TcpSocket] = {}


#: RSTs answering segments that match no connection: at most this many per second, in bursts
#: of at most the second figure (the same bound as Linux puts on ICMP errors).
DEFAULT_RESET_RATE: Final = 1000.0
DEFAULT_RESET_BURST: Final = 50
#: A listener's counters and the stack-wide counters they add to.
_LISTENER_COUNTS: Final = (
    ("syns_dropped", "tcp_listen_drops"),
    ("syncookies_sent", "tcp_syncookies_sent"),
    ("syncookies_validated", "tcp_syncookies_validated"),
    ("syncookies_failed", "tcp_syncookies_failed"),
)


class TcpMux:
    """All TCP sockets of one stack."""

    def __init__(
        self,
        local_ip: int,
        config: TcpConfig,
        secret: bytes,
        counters: Counters,
        events: EventQueue,
        *,
        fin_timeout: float = DEFAULT_FIN_TIMEOUT,
        reset_rate: float = DEFAULT_RESET_RATE,
        reset_burst: int = DEFAULT_RESET_BURST,
    ) -> None:
        self.local_ip = local_ip
        self.config = config
        self.counters = counters
        self.events = events
        self.fin_timeout = fin_timeout
        self.conns: dict[Key, TcpSocket] = {}
        self.listeners: dict[int, TcpListen] = {}
        #: Counters of connections that reached CLOSED, summed (see `totals`).
        self._closed_totals: dict[str, int] = dict.fromkeys(TCP_COUNTERS, 0)
        self._isn = IsnGenerator(secret)
        self._cookies = SynCookies(secret)
        self._resets = TokenBucket(reset_rate, reset_burst)
        self._dirty: dict[TcpSocket, None] = {}
        self._heap: list[tuple[float, int, TcpSocket]] = []
        self._tiebreak = itertools.count()
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        # Start somewhere the secret decides: reproducible in tests, not guessable off-path.
        seed = int.from_bytes(hashlib.blake2s(secret, person=b"ephport").digest()[:4], "big")
        self._next_port = EPHEMERAL_FIRST + seed % span

    # -- opening --------------------------------------------------------------------------------

    def connect(
        self, handle: int, remote_ip: int, remote_port: int, now: float, local_port: int | None
    ) -> TcpSocket:
        """Active open; the SYN leaves at the next `poll`."""
        if not 0 < remote_port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"bad TCP port {remote_port}")
        if local_port is None:
            local_port = self._ephemeral(remote_ip, remote_port)
        elif not 0 < local_port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"bad TCP port {local_port}")
        key = (remote_ip, remote_port, local_port)
        if key in self.conns:
            raise OSError(errno.EADDRINUSE, f"TCP 4-tuple {key} in use")
        local = (self.local_ip, local_port)
        remote = (remote_ip, remote_port)
        conn = TcpConnection(
            local,
            remote,
            self.config,
            isn=self._isn(local, remote, now),
            ts_offset=self._isn.ts_offset(local, remote),
        )
        conn.connect()
        sock = TcpSocket(conn, key, handle)
        self.conns[key] = sock
        self._dirty[sock] = None
        self.counters.tcp_connections_opened += 1
        return sock

    def listen(self, handle: int, port: int, backlog: int) -> TcpListen:
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"bad TCP port {port}")
        if port in self.listeners:
            raise OSError(errno.EADDRINUSE, f"TCP port {port} already listening")
        listener = TcpListener(
            (self.local_ip, port),
            self.config,
            isn=self._isn,
            ts_offset=self._isn.ts_offset,
            backlog=max(1, backlog),
            cookies=self._cookies,
        )
        lst = TcpListen(handle, port, listener)
        self.listeners[port] = lst
        return lst

    def accept(self, lst: TcpListen, handle_for: Callable[[TcpSocket], int]) -> TcpSocket | None:
        """Hand the oldest established child a handle (from `handle_for`) and replay the events
        it produced while waiting."""
        while True:
            conn = lst.listener.accept()
            if conn is None:
                return None
            sock = lst.children.pop(conn, None)
            if sock is not None:
                break
        sock.listener = None
        sock.handle = handle_for(sock)
        self.counters.tcp_connections_accepted += 1
        early, sock.early = sock.early, []
        for ev in early:
            self._translate(sock, ev)
        if conn.recv_available:
            self.events.readable(sock.handle)
        return sock

    # -- segment arrival ------------------------------------------------------------------------

    def receive(self, seg: TcpRepr, src_ip: int, now: float) -> TcpRepr | None:
        """Demultiplex one validated segment; returns a reply to send to `src_ip` (an RST)."""
        sock = self.conns.get((src_ip, seg.src_port, seg.dst_port))
        if sock is not None:
            sock.conn.receive_segment(seg, now)
            self._dirty[sock] = None
            return None
        lst = self.listeners.get(seg.dst_port)
        if lst is not None:
            listener = lst.listener
            before = [getattr(listener, name) for name, _ in _LISTENER_COUNTS]
            result = listener.receive_segment(seg, (src_ip, seg.src_port), now)
            counters = self.counters
            for (name, total), old in zip(_LISTENER_COUNTS, before, strict=True):
                if grew := getattr(listener, name) - old:
                    setattr(counters, total, getattr(counters, total) + grew)
            conn = result.connection
            if conn is not None:
                key = (src_ip, seg.src_port, seg.dst_port)
                child = TcpSocket(conn, key, None)
                child.listener = lst
                lst.children[conn] = child
                self.conns[key] = child
                self._dirty[child] = None
            elif result.reply is not None and result.reply.flags & TcpFlags.RST:
                return self._reset(result.reply, now)
            return result.reply
        self.counters.drop("tcp:no-socket")
        rst = reset_for(seg)
        return self._reset(rst, now) if rst is not None else None

    def _reset(self, rst: TcpRepr, now: float) -> TcpRepr | None:
        """An RST answering a segment no connection wanted, if the stack-wide bound allows:
        spoofed segments must not draw unbounded output (RFC 5961 section 7's concern)."""
        if not self._resets.take(now):
            self.counters.tcp_resets_rate_limited += 1
            return None
        self.counters.tcp_resets_out += 1
        return rst

    def icmp_unreachable(self, remote_ip: int, remote_port: int, local_port: int, seq: int) -> None:
        """A hard ICMP error quoting one of our segments. Like Linux, it only kills a connection
        still opening (in SYN-SENT, where the quoted sequence number must be our ISN, RFC 5927);
        an established one rides out transient routing trouble."""
        sock = self.conns.get((remote_ip, remote_port, local_port))
        if sock is None:
            return
        conn = sock.conn
        if conn.state is TcpState.SYN_SENT and seq == conn.iss:
            sock.fail_reason = "icmp unreachable"
            conn.abort()
            self._dirty[sock] = None

    # -- application calls ----------------------------------------------------------------------

    def touch(self, sock: TcpSocket) -> None:
        """The application changed something (sent, read, closed): poll this connection."""
        if sock.in_table:
            self._dirty[sock] = None

    def close(self, sock: TcpSocket, now: float) -> None:
        """Release the handle; the connection finishes in the background (an orphan)."""
        sock.handle = None
        conn = sock.conn
        if conn.state is _CLOSED:
            return
        if conn.recv_available:
            conn.abort()  # Linux: closing with unread data resets the connection
        else:
            conn.close()
            sock.orphan_deadline = now + self.fin_timeout
        self.touch(sock)

    def abort(self, sock: TcpSocket) -> None:
        sock.handle = None
        sock.conn.abort()
        self.touch(sock)

    def close_listener(self, lst: TcpListen) -> None:
        """Stop listening; connections not yet accepted are reset (as Linux does)."""
        if self.listeners.get(lst.port) is lst:
            del self.listeners[lst.port]
        for child in lst.children.values():
            child.listener = None
            child.early.clear()
            child.conn.abort()
            self.touch(child)
        lst.children.clear()

    # -- output ---------------------------------------------------------------------------------

    def poll(self, now: float, emit: EmitFunction) -> None:
        """Run due timers and service every dirty connection."""
        heap = self._heap
        dirty = self._dirty
        while heap and heap[0][0] <= now:
            deadline, _, sock = heapq.heappop(heap)
            if sock.deadline == deadline and sock.in_table:
                sock.deadline = None
                dirty[sock] = None
        if not dirty:
            return
        self._dirty = {}
        for sock in dirty:
            if sock.in_table:
                self._service(sock, now, emit)

    def _service(self, sock: TcpSocket, now: float, emit: EmitFunction) -> None:
        conn = sock.conn
        if sock.handle is None and sock.listener is None:
            # Orphan: nobody will read, keep the window open; enforce tcp_fin_timeout.
            if conn.recv_available:
                conn.recv()
            od = sock.orphan_deadline
            if od is not None and now >= od:
                if conn.state is _FIN_WAIT_2:
                    conn.abort()
                else:
                    sock.orphan_deadline = now + self.fin_timeout
        segs = conn.poll(now)
        if segs:
            emit(sock, segs, now)
        for ev in conn.events():
            self._translate(sock, ev)
        if conn.state is _CLOSED:
            self._forget(sock)
            return
        t = conn.next_timeout()
        od = sock.orphan_deadline
        if od is not None and (t is None or od < t):
            t = od
        if t is not None:
            d = sock.deadline
            if d is None or t < d:
                sock.deadline = t
                heapq.heappush(self._heap, (t, next(self._tiebreak), sock))

    def next_timeout(self) -> float | None:
        """Earliest pending timer (possibly a lazy entry, which is merely early)."""
        heap = self._heap
        while heap:
            deadline, _, sock = heap[0]
            if sock.deadline == deadline and sock.in_table:
                return deadline
            heapq.heappop(heap)
        return None

    @property
    def has_work(self) -> bool:
        """Some connection waits to be polled now."""
        return bool(self._dirty)

    # -- internals ------------------------------------------------------------------------------

    def _translate(self, sock: TcpSocket, ev: TcpEvent) -> None:
        """Turn a connection event into a stack event for the socket's handle."""
        h = sock.handle
        if h is None:
            lst = sock.listener
            if lst is not None:  # waiting for accept
                if type(ev) is TcpConnected:
                    self.events.append(Accepted(lst.handle))
                else:
                    sock.early.append(ev)
            return  # orphans report to nobody
        kind = type(ev)
        events = self.events
        if kind is TcpDataReceived:
            events.readable(h)
        elif kind is TcpSendSpaceAvailable:
            events.append(Writable(h))
        elif kind is TcpConnected:
            events.append(Connected(h))
        elif kind is TcpPeerClosed:
            events.append(PeerClosed(h))
        elif kind is TcpClosed:
            reason = sock.fail_reason
            events.append(ConnectionFailed(h, reason) if reason else Closed(h))
        elif kind is TcpReset:
            events.append(Reset(h))
        elif kind is TcpConnectionFailed:
            events.append(ConnectionFailed(h, ev.reason))  # type: ignore[union-attr]

    def _forget(self, sock: TcpSocket) -> None:
        """The connection reached CLOSED: later segments for its 4-tuple get RSTs."""
        if self.conns.get(sock.key) is sock:
            del self.conns[sock.key]
            _add_counters(self._closed_totals, sock.conn.stats)
        sock.in_table = False
        sock.deadline = None
        lst = sock.listener
        if lst is not None and not sock.conn.recv_available:
            lst.children.pop(sock.conn, None)  # the listener prunes it from its backlog too

    def totals(self) -> dict[str, int]:
        """TCP counters (retransmissions, timeouts, segments...) summed over every connection
        this stack ever had, open or closed: what a run's report needs to judge the link."""
        out = dict(self._closed_totals)
        for sock in self.conns.values():
            _add_counters(out, sock.conn.stats)
        return out

    def _ephemeral(self, remote_ip: int, remote_port: int) -> int:
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
            if (remote_ip, remote_port, port) not in self.conns and port not in self.listeners:
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no ephemeral TCP port left")


def _add_counters(into: dict[str, int], stats: tcp.TcpStats) -> None:
    """Add the counters (ints; not the float/int gauges at the end) of `stats` to `into`."""
    for name in TCP_COUNTERS:
        into[name] = into.get(name, 0) + getattr(stats, name)

"""Events `NetStack.events()` reports, each naming the socket handle it concerns.

As in h11/h2 and the sans-I/O TCP underneath, the stack never calls back into its owner: it
appends events while processing frames and time, and the owner drains them after `poll()`.
Events are hints about what changed, not data carriers: `Readable` says "call `tcp_recv`",
and at most one `Readable` (or `UdpReadable`) per handle appears in one drained batch however
many segments arrived, so a burst of 40 segments costs the owner one wake-up, not 40.

Every TCP connection handle receives exactly one terminal event (`Closed`, `Reset` or
`ConnectionFailed`) unless the application closed or aborted it first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connected:
    """An active open (`tcp_connect`) completed its handshake."""

    handle: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """A connection on listener `handle` completed its handshake: `tcp_accept` will return it."""

    handle: int


@dataclass(frozen=True, slots=True)
class Readable:
    """New in-order bytes can be taken with `tcp_recv` / `tcp_recv_into`."""

    handle: int


@dataclass(frozen=True, slots=True)
class Writable:
    """The send buffer, which earlier refused bytes, has room again (`tcp_send`)."""

    handle: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer's FIN arrived: after the buffered bytes, the stream is at EOF."""

    handle: int


@dataclass(frozen=True, slots=True)
class Closed:
    """Terminal: the connection finished normally."""

    handle: int


@dataclass(frozen=True, slots=True)
class Reset:
    """Terminal: the peer reset the connection, or refused it (RST to our SYN)."""

    handle: int


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """Terminal: the connection gave up (retransmission limit, keep-alive, ICMP hard error)."""

    handle: int
    reason: str


@dataclass(frozen=True, slots=True)
class UdpReadable:
    """Datagrams wait in the socket's queue: drain with `udp_recvfrom` until it returns None."""

    handle: int


@dataclass(frozen=True, slots=True)
class EchoReplyReadable:
    """Echo replies wait in a ping socket's queue: drain with `icmp_recv` until None."""

    handle: int


@dataclass(frozen=True, slots=True)
class UdpUnreachable:
    """An ICMP port/host unreachable quoted a datagram this socket sent to (`ip`, `port`)."""

    handle: int
    ip: int
    port: int


StackEvent = (
    Connected
    | Accepted
    | Readable
    | Writable
    | PeerClosed
    | Closed
    | Reset
    | ConnectionFailed
    | UdpReadable
    | UdpUnreachable
    | EchoReplyReadable
)

#: Events after which a TCP handle will report nothing more.
TERMINAL_EVENTS = (Closed, Reset, ConnectionFailed)


class EventQueue:
    """The stack's pending events, with `Readable`/`UdpReadable` coalesced per drained batch.

    Readiness is deduplicated with a set of handles that is cleared on `drain()`: the owner
    learns "there is something to read" once per batch, then reads until nothing is left.
    """

    __slots__ = ("_datagrams", "_events", "_readable")

    def __init__(self) -> None:
        self._events: list[StackEvent] = []
        self._readable: set[int] = set()
        self._datagrams: set[int] = set()

    def append(self, event: StackEvent) -> None:
        self._events.append(event)

    def readable(self, handle: int) -> None:
        if handle not in self._readable:
            self._readable.add(handle)
            self._events.append(Readable(handle))

    def udp_readable(self, handle: int) -> None:
        if handle not in self._datagrams:
            self._datagrams.add(handle)
            self._events.append(UdpReadable(handle))

    def echo_readable(self, handle: int) -> None:
        if handle not in self._datagrams:
            self._datagrams.add(handle)
            self._events.append(EchoReplyReadable(handle))

    def drain(self) -> list[StackEvent]:
        events = self._events
        if events:
            self._events = []
            self._readable.clear()
            self._datagrams.clear()
        return events

    def __len__(self) -> int:
        return len(self._events)

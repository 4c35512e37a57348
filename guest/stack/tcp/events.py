"""Events a connection reports to its owner (drained with `TcpConnection.events()`).

Like h11/h2, the state machine never calls back into the application: it appends events and
the caller drains them after each input. Every connection ends with exactly one terminal event
(`TcpClosed`, `TcpReset` or `TcpConnectionFailed`), which tells the stack it may drop the
connection from its demultiplexing table. The names carry `Tcp` because the stack above
(`guest.stack.core.events`) reports socket events of its own under the plain names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TcpConnected:
    """The three-way handshake completed (ESTABLISHED reached)."""


@dataclass(frozen=True, slots=True)
class TcpDataReceived:
    """`nbytes` more in-order bytes can be taken with `recv()`."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class TcpSendSpaceAvailable:
    """The send buffer, which earlier refused bytes, has `nbytes` of free space again."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class TcpPeerClosed:
    """The peer's FIN arrived in order: after the buffered bytes, the stream is at EOF."""


@dataclass(frozen=True, slots=True)
class TcpClosed:
    """Terminal: the connection finished normally (or was aborted locally)."""


@dataclass(frozen=True, slots=True)
class TcpReset:
    """Terminal: the peer reset the connection (or refused it)."""


@dataclass(frozen=True, slots=True)
class TcpConnectionFailed:
    """Terminal: the connection gave up (SYN or data retransmission limit, keep-alive)."""

    reason: str


TcpEvent = (
    TcpConnected
    | TcpDataReceived
    | TcpSendSpaceAvailable
    | TcpPeerClosed
    | TcpClosed
    | TcpReset
    | TcpConnectionFailed
)

#: Events after which the connection is in CLOSED and will produce nothing but RSTs.
TERMINAL_TCP_EVENTS = (TcpClosed, TcpReset, TcpConnectionFailed)

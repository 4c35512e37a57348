"""Events a connection reports to its owner (drained with `TcpConnection.events()`).

Like h11/h2, the state machine never calls back into the application: it appends events and
the caller drains them after each input. Every connection ends with exactly one terminal event
(`Closed`, `Reset` or `ConnectionFailed`), which tells the stack it may drop the connection from
its demultiplexing table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Connected:
    """The three-way handshake completed (ESTABLISHED reached)."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """`nbytes` more in-order bytes can be taken with `recv()`."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class SendSpaceAvailable:
    """The send buffer, which earlier refused bytes, has `nbytes` of free space again."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer's FIN arrived in order: after the buffered bytes, the stream is at EOF."""


@dataclass(frozen=True, slots=True)
class Closed:
    """Terminal: the connection finished normally (or was aborted locally)."""


@dataclass(frozen=True, slots=True)
class Reset:
    """Terminal: the peer reset the connection (or refused it)."""


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """Terminal: the connection gave up (SYN or data retransmission limit, keep-alive)."""

    reason: str


#: The name used in the design brief; `ConnectionFailed` says more at a call site.
Error = ConnectionFailed

Event = (
    Connected | DataReceived | SendSpaceAvailable | PeerClosed | Closed | Reset | ConnectionFailed
)

#: Events after which the connection is in CLOSED and will produce nothing but RSTs.
TERMINAL_EVENTS = (Closed, Reset, ConnectionFailed)

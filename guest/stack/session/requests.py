"""What the session server asks of the stack, and what the stack tells it back.

These types are the whole contract between the app<->stack boundary and the protocol code: the
server knows sockets only as ids, byte streams, datagrams and errnos, never TCP. Requests that
need an answer (`Completable`) carry a `token`; the stack answers with
`SessionServer.complete(req, ...)`, at any later time, or never if the request became moot (the
server then simply ignores a late answer).

Addresses are (ip, port) with the IPv4 address as a host-order int, as `wire.addr.ipv4` gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


@dataclass(frozen=True, slots=True, eq=False)
class ConnectReq:
    """Open a stream to (ip, port) as `sock_id`. Answer: complete(req, 0, local=(ip, port)) or
    complete(req, ECONNREFUSED / ETIMEDOUT / ENETUNREACH / ...)."""

    token: int
    session: int
    sock_id: int
    ip: int
    port: int


@dataclass(frozen=True, slots=True, eq=False)
class ListenReq:
    """Listen on `port` (0: any) as `sock_id`; report connections with
    `SessionServer.incoming(sock_id, peer)`. Answer: complete(req, 0, port=bound) or EADDRINUSE."""

    token: int
    session: int
    sock_id: int
    port: int
    backlog: int


@dataclass(frozen=True, slots=True, eq=False)
class BindReq:
    """Bind a UDP socket `sock_id` to `port` (0: any); report datagrams with
    `SessionServer.deliver_datagram`. Answer: complete(req, 0, port=bound) or EADDRINUSE."""

    token: int
    session: int
    sock_id: int
    port: int


@dataclass(frozen=True, slots=True, eq=False)
class SendToReq:
    """Send one datagram from UDP socket `sock_id`. Answer: complete(req, 0) or an errno."""

    token: int
    session: int
    sock_id: int
    ip: int
    port: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TxReady:
    """The application queued bytes on stream `sock_id`: pull them with `tx_peek`/`tx_release`
    (as `backend.pump_tx` does). Pull until `tx_peek` returns nothing, or stop when the send
    buffer is full and call `tx_kick(sock_id)` when it has room again."""

    sock_id: int


@dataclass(frozen=True, slots=True)
class RxSpace:
    """The application read from stream `sock_id` after a `deliver` came up short: deliver
    more."""

    sock_id: int


@dataclass(frozen=True, slots=True)
class ShutdownReq:
    """The application will send no more on `sock_id` (every byte it sent was already pulled):
    send FIN."""

    sock_id: int


@dataclass(frozen=True, slots=True)
class CloseReq:
    """Forget `sock_id` (any kind): gracefully (FIN after the data already pulled), or by reset
    if `abort` (the application died, closed with unread data, or corrupted its ring). The server
    has already dropped its side; later calls about `sock_id` are ignored."""

    sock_id: int
    abort: bool


Completable = ConnectReq | ListenReq | BindReq | SendToReq
Request = ConnectReq | ListenReq | BindReq | SendToReq | TxReady | RxSpace | ShutdownReq | CloseReq


class Event(IntEnum):
    """What the stack reports about a socket with `SessionServer.notify`. Each applies after all
    data delivered before it, so deliver everything first."""

    PEER_CLOSED = 1  # the peer's FIN: end of stream once the delivered bytes are read
    RESET = 2  # the peer reset the connection (ECONNRESET)
    FAILED = 3  # the connection failed with the given errno (ETIMEDOUT, ...)
    CLOSED = 4  # the stack is done with this socket id

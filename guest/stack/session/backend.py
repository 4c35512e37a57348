"""The stack as the session server sees it: `StackBackend`, and the glue that drives one.

A stack integrates either by calling `dispatch(server, backend, server.handle_readable(fd))`
from its own event loop for each readable fd in `server.fds()`, or, when the session server is
all it serves (tests, benchmarks), by `run(server, backend, stop)`.

The backend answers through the server (`complete`, `deliver`, `deliver_datagram`, `incoming`,
`notify`, `tx_kick`), synchronously inside these calls or later from its own timers and
packet handlers.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from typing import Final, Protocol

from .doorbell import default_spin
from .requests import (
    BindReq,
    CloseReq,
    ConnectReq,
    ListenReq,
    Request,
    RxSpace,
    SendToReq,
    ShutdownReq,
    TxReady,
)
from .server import SessionServer

#: Bytes offered to `StackBackend.send` per call.
TX_BATCH: Final = 256 * 1024


class StackBackend(Protocol):
    def connect(self, req: ConnectReq) -> None:
        """Start a connection; `server.complete(req, ...)` when it is up or has failed."""

    def listen(self, req: ListenReq) -> None:
        """Start listening; `server.complete(req, ...)`, then `server.incoming` per connection."""

    def udp_bind(self, req: BindReq) -> None:
        """Bind a UDP socket; `server.complete(req, ...)`."""

    def udp_sendto(self, req: SendToReq) -> None:
        """Send a datagram; `server.complete(req, ...)`."""

    def send(self, sock_id: int, data: list[memoryview]) -> int:
        """Take bytes the application sent (views into its ring, valid during this call only):
        return how many were taken, from the start. Fewer than offered means the send buffer is
        full: call `server.tx_kick(sock_id)` once it has room. Return the full length for a
        socket that no longer exists (the bytes are dropped)."""
        ...

    def rx_space(self, sock_id: int) -> None:
        """The application made room after a short `server.deliver`: deliver more."""

    def shutdown_write(self, sock_id: int) -> None:
        """No more data from the application on `sock_id` (all of it was taken): send FIN."""

    def close(self, sock_id: int, abort: bool) -> None:
        """Forget `sock_id`: FIN after the taken data, or reset if `abort`."""


def pump_tx(server: SessionServer, backend: StackBackend, sock_id: int) -> int:
    """Move what the application queued on `sock_id` into the stack; returns bytes moved."""
    moved = 0
    while True:
        views = server.tx_peek(sock_id, TX_BATCH)
        if not views:
            return moved
        offered = sum(len(v) for v in views)
        taken = backend.send(sock_id, views)
        server.tx_release(sock_id, taken)
        moved += taken
        if taken < offered:
            return moved  # the backend's buffer is full; it will tx_kick


def dispatch(server: SessionServer, backend: StackBackend, requests: list[Request]) -> None:
    """Hand each request to the backend, in order."""
    for req in requests:
        match req:
            case TxReady(sock_id):
                pump_tx(server, backend, sock_id)
            case RxSpace(sock_id):
                backend.rx_space(sock_id)
            case ConnectReq():
                backend.connect(req)
            case ListenReq():
                backend.listen(req)
            case BindReq():
                backend.udp_bind(req)
            case SendToReq():
                backend.udp_sendto(req)
            case ShutdownReq(sock_id):
                backend.shutdown_write(sock_id)
            case CloseReq(sock_id, abort):
                backend.close(sock_id, abort)


def run(
    server: SessionServer,
    backend: StackBackend,
    stop: threading.Event,
    poll_interval: float = 0.05,
    spin: float | None = None,
) -> None:
    """Serve until `stop` is set. Uses poll(), rebuilt whenever the server's fd set changes
    (see `SessionServer.fds` for why not a persistent epoll set). After activity it keeps
    polling without blocking for `spin` seconds (default: `doorbell.default_spin`, i.e. none on
    one CPU), which saves the wakeup latency of a request that follows closely."""
    spin = default_spin() if spin is None else spin
    selector = selectors.PollSelector()
    version = -1
    busy_until = 0.0
    try:
        while not stop.is_set() and not server.closed:
            if server.fds_version != version:
                version = server.fds_version
                selector.close()
                selector = selectors.PollSelector()
                for fd in server.fds():
                    selector.register(fd, selectors.EVENT_READ)
            ready = selector.select(0)
            if ready:
                busy_until = time.monotonic() + spin
            elif time.monotonic() < busy_until:
                os.sched_yield()  # an application runnable on our CPU gets to run
                continue
            else:
                ready = selector.select(poll_interval)
                busy_until = time.monotonic() + spin
            for key, _ in ready:
                dispatch(server, backend, server.handle_readable(key.fd))
                if server.fds_version != version:
                    break  # an fd may have closed (and its number been reused): rebuild first
    finally:
        selector.close()

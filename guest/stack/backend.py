"""`NetStackBackend`: the session server's requests carried out on a `NetStack`.

The session boundary (`guest.stack.session`) knows applications and their rings, `NetStack`
knows sockets and segments; this adapter is the one place that knows both: it maps session
socket ids to stack handles, moves bytes between rings and sockets, and turns the stack's
events into session events. The monolithic stack and the factored stack's protocol domain
run it alike, inside the one event loop (`guest.stack.loop`).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from guest.stack.core import events as ev
from guest.stack.core.netstack import NetStack
from guest.stack.session import requests as rq
from guest.stack.session.server import SessionServer
from guest.stack.wire.addr import ipv4

RECV_CHUNK = 256 * 1024


def _endpoint(text: str) -> tuple[int, int]:
    ip, _, port = text.rpartition(":")
    return ipv4(ip), int(port)


def _failure_errno(reason: str) -> int:
    reason = reason.lower()
    if "refused" in reason or "reset" in reason:
        return errno.ECONNREFUSED
    if "unreach" in reason:
        return errno.EHOSTUNREACH
    if "time" in reason:
        return errno.ETIMEDOUT
    return errno.ECONNABORTED


class NetStackBackend:
    """Maps the session server's sockets onto NetStack handles and relays events both ways.

    Received data is pulled from TCP only as fast as the application's ring takes it: a short
    `deliver` parks the rest and stops reading that connection, so the TCP receive window closes
    and the peer is flow-controlled, instead of this process buffering without bound.
    """

    def __init__(self, stack: NetStack, server: SessionServer, clock: Callable[[], float]):
        self.st = stack
        self.server = server
        self.clock = clock
        self.handle_of: dict[int, int] = {}  # session sock_id -> NetStack handle
        self.sock_of: dict[int, int] = {}  # NetStack handle -> session sock_id
        self.connecting: dict[int, rq.ConnectReq] = {}  # handle -> request awaiting Connected
        self.parked: dict[int, memoryview] = {}  # sock_id -> received bytes the ring refused
        self.eof_pending: set[int] = set()  # sock_ids whose PEER_CLOSED waits behind parked
        self.blocked_tx: set[int] = set()  # sock_ids whose send buffer was full
        self._buf = bytearray(RECV_CHUNK)

    # --- mapping ------------------------------------------------------------------------------

    def _map(self, sock_id: int, handle: int) -> None:
        self.handle_of[sock_id] = handle
        self.sock_of[handle] = sock_id

    def _forget(self, sock_id: int) -> int | None:
        handle = self.handle_of.pop(sock_id, None)
        if handle is not None:
            self.sock_of.pop(handle, None)
        self.parked.pop(sock_id, None)
        self.eof_pending.discard(sock_id)
        self.blocked_tx.discard(sock_id)
        return handle

    # --- StackBackend (requests from applications) -------------------------------------------

    def connect(self, req: rq.ConnectReq) -> None:
        try:
            handle = self.st.tcp_connect(req.ip, req.port, self.clock())
        except OSError as e:
            self.server.complete(req, e.errno or errno.EINVAL)
            return
        self._map(req.sock_id, handle)
        self.connecting[handle] = req

    def listen(self, req: rq.ListenReq) -> None:
        self._bound(req, lambda: self.st.tcp_listen(req.port, req.backlog))

    def udp_bind(self, req: rq.BindReq) -> None:
        self._bound(req, lambda: self.st.udp_bind(req.port))

    def _bound(self, req: rq.ListenReq | rq.BindReq, open_socket: Callable[[], int]) -> None:
        """Open a socket bound to a local port and answer with the port (or the errno)."""
        try:
            handle = open_socket()
        except OSError as e:
            self.server.complete(req, e.errno or errno.EINVAL)
            return
        self._map(req.sock_id, handle)
        self.server.complete(req, 0, port=int(self.st.socket_info(handle)["local_port"]))

    def udp_sendto(self, req: rq.SendToReq) -> None:
        handle = self.handle_of.get(req.sock_id)
        if handle is None:
            self.server.complete(req, errno.EBADF)
            return
        try:
            ok = self.st.udp_sendto(handle, req.payload, req.ip, req.port, self.clock())
        except OSError as e:
            self.server.complete(req, e.errno or errno.EINVAL)
            return
        self.server.complete(req, 0 if ok else errno.ENOBUFS)

    def send(self, sock_id: int, data: list[memoryview]) -> int:
        handle = self.handle_of.get(sock_id)
        total = sum(len(v) for v in data)
        if handle is None:
            return total  # the socket is gone: drop, as the contract says
        taken = 0
        try:
            for view in data:
                n = self.st.tcp_send(handle, view)
                taken += n
                if n < len(view):
                    self.blocked_tx.add(sock_id)
                    break
        except BrokenPipeError:
            return total
        return taken

    def rx_space(self, sock_id: int) -> None:
        handle = self.handle_of.get(sock_id)
        if handle is not None:
            self._drain(sock_id, handle)

    def shutdown_write(self, sock_id: int) -> None:
        handle = self.handle_of.get(sock_id)
        if handle is not None:
            self.st.tcp_shutdown(handle)

    def close(self, sock_id: int, abort: bool) -> None:
        handle = self._forget(sock_id)
        if handle is None:
            return
        self.connecting.pop(handle, None)
        try:
            if abort:
                self.st.tcp_abort(handle)
            else:
                self.st.tcp_close(handle, self.clock())
        except OSError:
            pass  # already released by the stack

    # --- events from the stack ---------------------------------------------------------------

    def _drain(self, sock_id: int, handle: int) -> None:
        """Deliver parked bytes, then read the connection until the ring refuses more."""
        server = self.server
        parked = self.parked.pop(sock_id, None)
        if parked is not None:
            n = server.deliver(sock_id, parked)
            if n < len(parked):
                self.parked[sock_id] = parked[n:]
                return
        buf = self._buf
        while True:
            try:
                got = self.st.tcp_recv_into(handle, buf)
            except OSError:
                return
            if not got:
                break
            chunk = bytes(buf[:got])
            n = server.deliver(sock_id, chunk)
            if n < got:
                self.parked[sock_id] = memoryview(chunk)[n:]
                return
        if sock_id in self.eof_pending:
            self.eof_pending.discard(sock_id)
            server.notify(sock_id, rq.Event.PEER_CLOSED)

    def handle_events(self) -> None:
        server, st = self.server, self.st
        for e in st.events():
            handle = e.handle
            sock_id = self.sock_of.get(handle)
            match e:
                case ev.Connected():
                    req = self.connecting.pop(handle, None)
                    if req is not None:
                        local = _endpoint(str(st.socket_info(handle)["local"]))
                        server.complete(req, 0, local=local)
                case ev.Accepted():
                    self._accept_all(handle)
                case ev.Readable():
                    if sock_id is not None and sock_id not in self.parked:
                        self._drain(sock_id, handle)
                case ev.Writable():
                    if sock_id is not None and sock_id in self.blocked_tx:
                        self.blocked_tx.discard(sock_id)
                        server.tx_kick(sock_id)
                case ev.PeerClosed():
                    if sock_id is not None:
                        self._drain(sock_id, handle)
                        if sock_id in self.parked:
                            self.eof_pending.add(sock_id)
                        else:
                            server.notify(sock_id, rq.Event.PEER_CLOSED)
                case ev.Reset() | ev.ConnectionFailed():
                    reason = getattr(e, "reason", "reset")
                    req = self.connecting.pop(handle, None)
                    if req is not None:
                        server.complete(req, _failure_errno(reason))
                        self._forget(req.sock_id)
                    elif sock_id is not None:
                        if isinstance(e, ev.Reset):
                            server.notify(sock_id, rq.Event.RESET, errno.ECONNRESET)
                        else:
                            server.notify(sock_id, rq.Event.FAILED, _failure_errno(reason))
                case ev.Closed():
                    if sock_id is not None:
                        self._drain(sock_id, handle)
                        server.notify(sock_id, rq.Event.CLOSED)
                case ev.UdpReadable():
                    while sock_id is not None and (got := st.udp_recvfrom(handle)) is not None:
                        data, ip, port = got
                        server.deliver_datagram(sock_id, (ip, port), data)

    def _accept_all(self, listener: int) -> None:
        listener_sock = self.sock_of.get(listener)
        while (handle := self.st.tcp_accept(listener)) is not None:
            if listener_sock is None:
                self.st.tcp_abort(handle)
                continue
            peer = _endpoint(str(self.st.socket_info(handle)["remote"]))
            sock_id = self.server.incoming(listener_sock, peer)
            if sock_id is None:
                self.st.tcp_abort(handle)
                continue
            self._map(sock_id, handle)
            self._drain(sock_id, handle)

"""The stack's side of the app<->stack boundary, driven by the stack's event loop, never blocking.

`SessionServer(path)` listens on a UNIX SOCK_SEQPACKET socket (a path, or '@name' for an abstract
name). Each connected application is a *session*; each of its stream sockets gets its own data
channel (two rings in two sealed shared regions, two doorbells: see `channel`), UDP sockets and
control operations go over the session's control socket (see `protocol`).

The stack's loop polls `fds()` for readability and calls `handle_readable(fd)`, which returns
`requests` for the stack (connect, listen, data ready, close, ...). The stack answers with
`complete`, `deliver`, `deliver_datagram`, `incoming` and `notify`, and pulls transmit data
with `tx_peek`/`tx_release`. `backend.dispatch` maps requests onto a `StackBackend`.

Why one channel per socket rather than one per session (with socket ids in slot metadata):
backpressure is then per socket for free. A full receive ring stops delivery to that socket
only, while with a shared ring one unread socket would block all others of the application
(or force the client library to copy data aside without bound). It also makes each ring a
plain byte stream of one connection, which the stack can treat as its send buffer, and lets a
blocked `recv` sleep on that socket's doorbell alone. The price is 4 fds and 2 mappings per
socket and a channel set-up (~100 us) per connect/accept.

Fault containment: every length, index and message from a client is validated; a client that
corrupts a ring loses that socket (the stack gets `CloseReq(abort=True)`, the client EPROTO);
one that stops reading only fills its own rings; one that floods garbage control messages or
stops reading replies loses its session; one that dies has all its sockets aborted when its
control socket closes. Nothing a client does raises out of `handle_readable`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import stat
import struct
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from .channel import WANT_RXSPACE, WANT_TX, ChannelLayout, StackChannel
from .doorbell import BellStats, Doorbell
from .protocol import (
    MAGIC,
    MAX_DATAGRAM,
    MAX_MESSAGE,
    NOREPLY,
    VERSION,
    Message,
    Op,
    ProtocolError,
    is_abstract,
    pack_geometry,
    unix_address,
)
from .requests import (
    BindReq,
    CloseReq,
    Completable,
    ConnectReq,
    Event,
    ListenReq,
    Request,
    RxSpace,
    SendToReq,
    ShutdownReq,
    TxReady,
)
from .shm import fence
from .stream import byte_view

MAX_SESSIONS: Final = 256
MAX_SOCKETS: Final = 256  # per session
MAX_PENDING: Final = 64  # requests a session may have waiting on the stack
MAX_BACKLOG: Final = 1024
MAX_BAD_MESSAGES: Final = 16  # then the session is dropped
MESSAGES_PER_READ: Final = 64  # fairness: one chatty session cannot starve the others
DGRAM_QUEUE: Final = 256  # datagrams queued per UDP socket (then dropped, as UDP does)
DGRAM_BYTES: Final = 1 << 20

_PEERCRED = struct.Struct("3i")


class _Kind(IntEnum):
    STREAM = 1
    LISTENER = 2
    DGRAM = 3


@dataclass(eq=False)
class _Socket:
    sock_id: int
    session: _Session
    kind: _Kind
    channel: StackChannel | None = None
    peer: tuple[int, int] = (0, 0)
    local: tuple[int, int] = (0, 0)
    client_open: bool = True  # the application has not closed it
    shut_pending: bool = False  # shutdown_write waits for the TX ring to drain
    close_pending: bool = False  # close waits for the TX ring to drain
    tx_closed: bool = False  # ShutdownReq issued: the stack takes no more data
    backlog: int = 0
    accept_queue: deque[_Socket] = field(default_factory=deque)
    datagrams: deque[tuple[int, int, bytes]] = field(default_factory=deque)
    dgram_bytes: int = 0
    parked: deque[Message] = field(default_factory=deque)  # ACCEPT / RECVFROM waiting


@dataclass(eq=False)
class _Session:
    sid: int
    sock: socket.socket
    pid: int
    uid: int
    hello: bool = False
    dead: bool = False
    bad_messages: int = 0
    sockets: dict[int, _Socket] = field(default_factory=dict)
    pending: dict[int, int] = field(default_factory=dict)  # req_id -> token


@dataclass(eq=False)
class _Pending:
    session: _Session
    msg: Message
    req: Completable
    sock: _Socket | None  # a socket being created by this request


@dataclass(slots=True)
class ServerStats:
    sessions_opened: int = 0
    sessions_closed: int = 0
    sessions_refused: int = 0  # over MAX_SESSIONS
    bad_messages: int = 0
    sessions_dropped: int = 0  # for misbehaviour (garbage, not reading replies)
    corrupt_channels: int = 0
    backlog_drops: int = 0
    dgram_drops: int = 0
    discarded_bytes: int = 0  # delivered to sockets the application already closed


class SessionServer:
    """See the module docstring. Not thread-safe: one event loop drives it."""

    def __init__(
        self,
        path: str,
        *,
        layout: ChannelLayout | None = None,
        mode: int | None = None,
        always_ring: bool = False,
    ) -> None:
        self.path = path
        self.layout = layout or ChannelLayout()
        self.always_ring = always_ring
        self.stats = ServerStats()
        self.bell_stats = BellStats()
        self.fds_version = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._bind(path, mode)
            self._listener.listen(64)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self._wake = Doorbell()
        self._wake_rung = False
        self._queue: list[Request] = []
        self._sessions: dict[int, _Session] = {}  # by control fd
        self._bells: dict[int, _Socket] = {}  # stack bell fd -> socket
        self._sockets: dict[int, _Socket] = {}
        self._pending: dict[int, _Pending] = {}  # token -> pending request
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._sids = itertools.count(1)
        self._closed = False

    def _bind(self, path: str, mode: int | None) -> None:
        if not is_abstract(path):
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode) and not _listening(path):
                    os.unlink(path)  # stale, from a stack that died
        self._listener.bind(unix_address(path))
        if mode is not None and not is_abstract(path):
            os.chmod(path, mode)

    # ----------------------------------------------------------------- the event loop's side

    def fds(self) -> list[int]:
        """Fds to poll for readability now. The set changes (`fds_version` counts changes) and
        numbers are reused after close: rebuild poll sets when the version moves, and prefer
        poll() to a persistent epoll set (which would keep watching a closed fd's file if the
        client still holds a copy of it)."""
        if self._closed:
            return []
        return [self._listener.fileno(), self._wake.fd, *self._sessions, *self._bells]

    def handle_readable(self, fd: int) -> list[Request]:
        """Process whatever made `fd` readable; returns the requests for the stack."""
        if self._closed:
            return []
        if fd == self._wake.fd:
            self._wake.drain()
            self._wake_rung = False
        elif fd == self._listener.fileno():
            self._accept_sessions()
        elif (session := self._sessions.get(fd)) is not None:
            self._read_control(session)
        elif (sock := self._bells.get(fd)) is not None:
            self._on_bell(sock)
        queue, self._queue = self._queue, []
        return queue

    # ------------------------------------------------------------------ the stack's answers

    def complete(
        self,
        req: Completable,
        status: int = 0,
        *,
        port: int = 0,
        local: tuple[int, int] = (0, 0),
    ) -> None:
        """Answer a request: `status` 0 or an errno; `port` the bound port (listen, bind);
        `local` the local address of a connection."""
        pending = self._pending.pop(req.token, None)
        if pending is None:
            return  # cancelled, or its session is gone: moot
        session, msg, sock = pending.session, pending.msg, pending.sock
        session.pending.pop(msg.req_id, None)
        if session.dead:
            return
        if status:
            if sock is not None:
                self._forget(sock)
            self._reply(session, msg.reply(status=status))
            return
        if isinstance(req, ConnectReq) and sock is not None and sock.channel is not None:
            sock.local = local
            self._reply_channel(session, msg, sock, local)
        elif isinstance(req, ListenReq | BindReq) and sock is not None:
            sock.local = (0, port or req.port)
            self._reply(session, msg.reply(sock_id=sock.sock_id, port=sock.local[1]))
        else:
            self._reply(session, msg.reply())

    def deliver(self, sock_id: int, data: bytes | bytearray | memoryview) -> int:
        """Append received stream bytes for the application; returns how many fit. A short
        count means the receive ring is full: keep the rest (close the window) and deliver it
        on `RxSpace`. Bytes for a socket the application closed are discarded (all 'fit')."""
        sock = self._sockets.get(sock_id)
        view = byte_view(data)
        if sock is None or sock.channel is None or not sock.client_open:
            self.stats.discarded_bytes += len(view)
            return len(view)
        channel = sock.channel
        total = 0
        while True:
            total += channel.rx.write(view[total:] if total else view)
            if total == len(view):
                break
            if channel.rx_ring.corrupt:
                self._corrupt(sock)
                return len(view)
            channel.want(WANT_RXSPACE, True)  # then re-check: the client may have just read
            fence()
            if channel.rx_ring.free() == 0:
                break
            channel.want(WANT_RXSPACE, False)
        if total:
            channel.data_notifier.notify()
        return total

    def deliver_datagram(self, sock_id: int, src: tuple[int, int], payload: bytes) -> bool:
        """Queue a datagram for a UDP socket; False if dropped (queue full, unknown socket)."""
        sock = self._sockets.get(sock_id)
        if sock is None or sock.kind != _Kind.DGRAM or len(payload) > MAX_DATAGRAM:
            return False
        if sock.parked:
            msg = sock.parked.popleft()
            self._reply(sock.session, msg.reply(ip=src[0], port=src[1], payload=bytes(payload)))
            return True
        if len(sock.datagrams) >= DGRAM_QUEUE or sock.dgram_bytes + len(payload) > DGRAM_BYTES:
            self.stats.dgram_drops += 1
            return False
        sock.datagrams.append((src[0], src[1], bytes(payload)))
        sock.dgram_bytes += len(payload)
        return True

    def incoming(self, listener_id: int, peer: tuple[int, int]) -> int | None:
        """A connection to listener `listener_id` is established: returns its new socket id
        (deliver to it at once; the application accepts it later), or None if refused
        (backlog full, listener gone): reset it."""
        listener = self._sockets.get(listener_id)
        if listener is None or listener.kind != _Kind.LISTENER or not listener.client_open:
            return None
        session = listener.session
        if len(listener.accept_queue) >= listener.backlog or len(session.sockets) >= MAX_SOCKETS:
            self.stats.backlog_drops += 1
            return None
        sock = self._new_socket(session, _Kind.STREAM)
        sock.peer = peer
        sock.local = listener.local
        if listener.parked:
            self._reply_channel(session, listener.parked.popleft(), sock, peer)
        else:
            listener.accept_queue.append(sock)
        return sock.sock_id

    def notify(self, sock_id: int, event: Event, err: int = 0) -> None:
        """Report an event on a socket (after the data delivered so far)."""
        sock = self._sockets.get(sock_id)
        if sock is None:
            return
        if event == Event.CLOSED:
            if sock.kind != _Kind.STREAM:
                self._fail_parked(sock, errno.EBADF)
            if sock.channel is not None:
                sock.channel.set_status(closed=True)
            return
        code = errno.ECONNRESET if event == Event.RESET else (err or errno.EIO)
        if sock.channel is not None:
            if event == Event.PEER_CLOSED:
                sock.channel.set_status(eof=True)
            else:
                sock.channel.set_status(error=code)
        elif event != Event.PEER_CLOSED:
            self._fail_parked(sock, code)

    def tx_peek(self, sock_id: int, max_bytes: int) -> list[memoryview]:
        """Views of up to `max_bytes` bytes the application queued on `sock_id`, oldest first;
        valid until `tx_release`. Empty when there is nothing (the client is then asked to ring
        the doorbell on its next write)."""
        sock = self._sockets.get(sock_id)
        if sock is None or sock.channel is None or sock.tx_closed:
            return []
        channel = sock.channel
        views = channel.tx.peek(max_bytes)
        if not views:
            channel.tx.consume(0)  # empty slots (only a broken client writes them)
            if channel.arm_tx():
                views = channel.tx.peek(max_bytes)
        if channel.tx_ring.corrupt:
            self._corrupt(sock)
            return []
        if not views and (sock.shut_pending or sock.close_pending):
            self._tx_drained(sock, post=True)
        return views

    def tx_release(self, sock_id: int, nbytes: int) -> None:
        """The stack took the first `nbytes` of what `tx_peek` showed."""
        sock = self._sockets.get(sock_id)
        if sock is None or sock.channel is None or nbytes == 0:
            return
        channel = sock.channel
        if channel.tx.consume(nbytes):
            channel.space_notifier.notify()  # the client may be waiting for TX space
        if (sock.shut_pending or sock.close_pending) and not channel.tx.readable():
            self._tx_drained(sock, post=True)

    def tx_kick(self, sock_id: int) -> None:
        """The stack has send-buffer room again: have `TxReady(sock_id)` come back."""
        if sock_id in self._sockets:
            self._post(TxReady(sock_id))

    def close(self) -> None:
        """Stop serving: every session is dropped (its sockets aborted: the returned requests
        are not delivered anywhere, the stack is going away too)."""
        if self._closed:
            return
        for session in list(self._sessions.values()):
            self._drop_session(session)
        self._closed = True
        self._changed()
        self._listener.close()
        self._wake.close()
        if not is_abstract(self.path):
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    def session_count(self) -> int:
        return len(self._sessions)

    def socket_count(self) -> int:
        return len(self._sockets)

    # --------------------------------------------------------------------------- internals

    def _emit(self, req: Request) -> None:
        self._queue.append(req)

    def _post(self, req: Request) -> None:
        """Queue a request outside `handle_readable`: the wake fd brings the loop back."""
        self._queue.append(req)
        if not self._wake_rung:
            self._wake_rung = True
            self._wake.ring()

    def _changed(self) -> None:
        self.fds_version += 1

    def _accept_sessions(self) -> None:
        for _ in range(MESSAGES_PER_READ):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: try again on the next readiness
            if len(self._sessions) >= MAX_SESSIONS:
                self.stats.sessions_refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            try:
                cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                pid, uid, _ = _PEERCRED.unpack(cred)
            except OSError:
                pid = uid = -1
            session = _Session(next(self._sids), conn, pid, uid)
            self._sessions[conn.fileno()] = session
            self.stats.sessions_opened += 1
            self._changed()

    def _read_control(self, session: _Session) -> None:
        for _ in range(MESSAGES_PER_READ):
            if session.dead:
                return
            try:
                data = session.sock.recv(MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop_session(session)
                return
            if not data:
                self._drop_session(session)
                return
            try:
                msg = Message.decode(data)
            except ProtocolError:
                self._bad(session)
                continue
            try:
                self._on_message(session, msg)
            except ProtocolError:
                self._bad(session)
            except OSError as exc:  # out of fds or memory for a channel: that request fails
                self._answer(session, msg, exc.errno or errno.EIO)

    def _bad(self, session: _Session) -> None:
        self.stats.bad_messages += 1
        session.bad_messages += 1
        if session.bad_messages > MAX_BAD_MESSAGES:
            self.stats.sessions_dropped += 1
            self._drop_session(session)

    def _on_message(self, session: _Session, msg: Message) -> None:
        if not session.hello:
            if msg.op != Op.HELLO or msg.payload != MAGIC or msg.arg != VERSION:
                self._reply(session, msg.reply(status=errno.EPROTONOSUPPORT))
                self._bad(session)
                return
            session.hello = True
            self._reply(session, msg.reply(sock_id=session.sid, arg=VERSION))
            return
        handler = _HANDLERS.get(msg.op)
        if handler is None:
            self._answer(session, msg, errno.EINVAL)
            raise ProtocolError(f"unknown op {msg.op}")
        handler(self, session, msg)

    def _answer(self, session: _Session, msg: Message, status: int) -> None:
        if not msg.flags & NOREPLY:
            self._reply(session, msg.reply(status=status))

    def _own(self, session: _Session, msg: Message, kind: _Kind) -> _Socket | None:
        """The session's socket `msg.sock_id` of `kind`, or None after answering EBADF."""
        sock = session.sockets.get(msg.sock_id)
        if sock is None or sock.kind != kind or not sock.client_open:
            self._answer(session, msg, errno.EBADF)
            return None
        return sock

    def _admit(self, session: _Session, msg: Message) -> bool:
        """Room for one more socket and one more pending request? Else answer and refuse."""
        if len(session.sockets) >= MAX_SOCKETS:
            self._answer(session, msg, errno.EMFILE)
            return False
        if len(session.pending) >= MAX_PENDING or msg.req_id in session.pending:
            self._answer(session, msg, errno.EAGAIN)
            return False
        return True

    def _start(self, session: _Session, msg: Message, req: Completable, sock: _Socket | None):
        self._pending[req.token] = _Pending(session, msg, req, sock)
        session.pending[msg.req_id] = req.token
        self._emit(req)

    def _op_connect(self, session: _Session, msg: Message) -> None:
        if not self._admit(session, msg):
            return
        if not 0 < msg.port < 65536:
            self._answer(session, msg, errno.EINVAL)
            return
        sock = self._new_socket(session, _Kind.STREAM)
        sock.peer = (msg.ip, msg.port)
        req = ConnectReq(next(self._tokens), session.sid, sock.sock_id, msg.ip, msg.port)
        self._start(session, msg, req, sock)

    def _op_listen(self, session: _Session, msg: Message) -> None:
        if not self._admit(session, msg):
            return
        sock = self._new_socket(session, _Kind.LISTENER)
        sock.backlog = max(1, min(msg.arg, MAX_BACKLOG))
        req = ListenReq(next(self._tokens), session.sid, sock.sock_id, msg.port, sock.backlog)
        self._start(session, msg, req, sock)

    def _op_bind(self, session: _Session, msg: Message) -> None:
        if not self._admit(session, msg):
            return
        sock = self._new_socket(session, _Kind.DGRAM)
        req = BindReq(next(self._tokens), session.sid, sock.sock_id, msg.port)
        self._start(session, msg, req, sock)

    def _op_sendto(self, session: _Session, msg: Message) -> None:
        sock = self._own(session, msg, _Kind.DGRAM)
        if sock is None:
            return
        if len(session.pending) >= MAX_PENDING or msg.req_id in session.pending:
            self._answer(session, msg, errno.EAGAIN)
            return
        if not 0 < msg.port < 65536:
            self._answer(session, msg, errno.EINVAL)
            return
        req = SendToReq(
            next(self._tokens), session.sid, sock.sock_id, msg.ip, msg.port, msg.payload
        )
        self._start(session, msg, req, None)

    def _op_accept(self, session: _Session, msg: Message) -> None:
        listener = self._own(session, msg, _Kind.LISTENER)
        if listener is None:
            return
        if listener.accept_queue:
            sock = listener.accept_queue.popleft()
            self._reply_channel(session, msg, sock, sock.peer)
        elif len(listener.parked) >= MAX_PENDING:
            self._answer(session, msg, errno.EAGAIN)
        else:
            listener.parked.append(msg)

    def _op_recvfrom(self, session: _Session, msg: Message) -> None:
        sock = self._own(session, msg, _Kind.DGRAM)
        if sock is None:
            return
        if sock.datagrams:
            ip, port, payload = sock.datagrams.popleft()
            sock.dgram_bytes -= len(payload)
            self._reply(session, msg.reply(ip=ip, port=port, payload=payload))
        elif len(sock.parked) >= MAX_PENDING:
            self._answer(session, msg, errno.EAGAIN)
        else:
            sock.parked.append(msg)

    def _op_shutdown(self, session: _Session, msg: Message) -> None:
        sock = self._own(session, msg, _Kind.STREAM)
        if sock is None:
            return
        if sock.channel is None or sock.tx_closed or sock.shut_pending:
            self._answer(session, msg, 0 if sock.channel is None else errno.ENOTCONN)
            return
        sock.shut_pending = True
        if not sock.channel.tx.readable():
            self._tx_drained(sock, post=False)
        else:
            self._emit(TxReady(sock.sock_id))
        self._answer(session, msg, 0)

    def _op_close(self, session: _Session, msg: Message) -> None:
        sock = session.sockets.get(msg.sock_id)
        if sock is None or not sock.client_open:
            self._answer(session, msg, errno.EBADF)
            return
        sock.client_open = False
        self._answer(session, msg, 0)
        for token in [t for t in session.pending.values() if self._pending[t].sock is sock]:
            self._cancel_token(token, errno.EBADF)  # closed while connecting: aborted
        if sock.sock_id not in self._sockets:
            return
        if sock.kind == _Kind.STREAM:
            if sock.channel is None:  # already reset (corrupt ring): the stack was told
                self._forget(sock)
                return
            sock.close_pending = True
            if sock.channel.tx.readable() and not sock.tx_closed and not sock.channel.error:
                self._emit(TxReady(sock.sock_id))  # close once the stack took the data
                return
            self._tx_drained(sock, post=False)
            return
        self._emit(CloseReq(sock.sock_id, abort=False))
        self._forget(sock)

    def _op_cancel(self, session: _Session, msg: Message) -> None:
        req_id = msg.arg
        token = session.pending.get(req_id)
        if token is not None:
            self._cancel_token(token, errno.ETIMEDOUT)
            return
        for sock in session.sockets.values():
            for parked in sock.parked:
                if parked.req_id == req_id:
                    sock.parked.remove(parked)
                    self._reply(session, parked.reply(status=errno.ETIMEDOUT))
                    return
        # already answered: nothing to do (the reply is on its way)

    def _cancel_token(self, token: int, status: int) -> None:
        pending = self._pending.pop(token)
        pending.session.pending.pop(pending.msg.req_id, None)
        self._reply(pending.session, pending.msg.reply(status=status))
        if pending.sock is not None:
            self._emit(CloseReq(pending.sock.sock_id, abort=True))
            self._forget(pending.sock)

    def _tx_drained(self, sock: _Socket, *, post: bool) -> None:
        """The TX ring is empty and a shutdown or close waited for that."""
        send = self._post if post else self._emit
        if sock.close_pending:
            channel = sock.channel
            unread = channel is not None and channel.rx_ring.free() < channel.layout.rx.slots
            send(CloseReq(sock.sock_id, abort=unread))  # unread data: reset, as Linux does
            self._forget(sock)
        elif sock.shut_pending:
            sock.shut_pending = False
            sock.tx_closed = True
            send(ShutdownReq(sock.sock_id))

    def _on_bell(self, sock: _Socket) -> None:
        """The client rang. A ring answers one epoch of a flag (see `doorbell`), and may be
        stale: rung for data a pump already took, or for room already refilled. Whatever the
        stack still wants after this, it re-arms with a fresh epoch, or the client, having rung
        for the old epoch, would never ring again: a lost wakeup."""
        channel = sock.channel
        if channel is None:
            return
        channel.stack_bell.drain()
        if not sock.tx_closed:
            if channel.tx.readable():
                self._emit(TxReady(sock.sock_id))  # the pump re-arms once it has drained
            elif channel.wanted(WANT_TX) and channel.arm_tx():
                self._emit(TxReady(sock.sock_id))
        if channel.wanted(WANT_RXSPACE):
            if channel.rx_ring.free() == 0:
                channel.want(WANT_RXSPACE, True)  # stale ring: a fresh epoch, then re-check
                fence()
            if channel.rx_ring.free() > 0:
                channel.want(WANT_RXSPACE, False)
                self._emit(RxSpace(sock.sock_id))
        if channel.corrupt:
            self._corrupt(sock)

    def _corrupt(self, sock: _Socket) -> None:
        """The client broke its side of a channel: reset that socket alone."""
        self.stats.corrupt_channels += 1
        channel = sock.channel
        if channel is None:
            return
        channel.set_status(error=errno.EPROTO)
        self._post(CloseReq(sock.sock_id, abort=True))
        self._drop_channel(sock)

    def _new_socket(self, session: _Session, kind: _Kind) -> _Socket:
        sock = _Socket(next(self._ids), session, kind)
        if kind == _Kind.STREAM:
            sock.channel = StackChannel(self.layout, self.bell_stats, self.always_ring)
            sock.channel.want(WANT_TX, True)  # ring on the first data
            self._bells[sock.channel.stack_bell.fd] = sock
            self._changed()
        session.sockets[sock.sock_id] = sock
        self._sockets[sock.sock_id] = sock
        return sock

    def _drop_channel(self, sock: _Socket) -> None:
        channel, sock.channel = sock.channel, None
        if channel is not None:
            self._bells.pop(channel.stack_bell.fd, None)
            channel.close()
            self._changed()

    def _forget(self, sock: _Socket) -> None:
        """Drop the server's side of a socket (the stack has been told, or never knew)."""
        self._drop_channel(sock)
        self._fail_parked(sock, errno.EBADF)
        for queued in sock.accept_queue:
            self._emit(CloseReq(queued.sock_id, abort=True))
            self._forget(queued)
        sock.accept_queue.clear()
        sock.session.sockets.pop(sock.sock_id, None)
        self._sockets.pop(sock.sock_id, None)

    def _fail_parked(self, sock: _Socket, status: int) -> None:
        while sock.parked:
            self._reply(sock.session, sock.parked.popleft().reply(status=status))

    def _reply(self, session: _Session, msg: Message, fds: list[int] | None = None) -> None:
        """Send a reply without blocking; a client whose socket is full does not read its
        replies (a well-behaved one has at most MAX_PENDING outstanding): drop it."""
        if session.dead:
            return
        data = msg.encode()
        try:
            if fds:
                socket.send_fds(session.sock, [data], fds)
            else:
                session.sock.send(data)
        except BlockingIOError:
            self.stats.sessions_dropped += 1
            self._drop_session(session)
        except OSError:
            self._drop_session(session)

    def _reply_channel(
        self, session: _Session, msg: Message, sock: _Socket, addr: tuple[int, int]
    ) -> None:
        channel = sock.channel
        if channel is None:  # reset before it was handed over
            self._reply(session, msg.reply(status=errno.ECONNRESET))
            self._forget(sock)
            return
        try:
            fds = channel.peer_fds()
        except OSError as exc:  # out of fds: this connection cannot be handed over
            self._reply(session, msg.reply(status=exc.errno or errno.EIO))
            self._post(CloseReq(sock.sock_id, abort=True))
            self._forget(sock)
            return
        try:
            payload = pack_geometry(channel.layout.tx, channel.layout.rx)
            self._reply(
                session,
                msg.reply(sock_id=sock.sock_id, ip=addr[0], port=addr[1], payload=payload),
                fds,
            )
        finally:
            for fd in fds:
                os.close(fd)
        channel.stack_region.close_fd()  # mapped; the client has its own fds now
        channel.client_region.close_fd()

    def _drop_session(self, session: _Session) -> None:
        """The client is gone (or dropped): abort everything it had, free everything."""
        if session.dead:
            return
        session.dead = True
        for token in list(session.pending.values()):
            pending = self._pending.pop(token, None)
            if pending is not None and pending.sock is not None:
                self._emit(CloseReq(pending.sock.sock_id, abort=True))
                self._forget(pending.sock)
        session.pending.clear()
        for sock in list(session.sockets.values()):
            if sock.sock_id in self._sockets:
                self._emit(CloseReq(sock.sock_id, abort=True))
                self._forget(sock)
        self._sessions.pop(session.sock.fileno(), None)
        session.sock.close()
        self.stats.sessions_closed += 1
        self._changed()
        if self._queue and not self._wake_rung:
            self._wake_rung = True
            self._wake.ring()


_HANDLERS = {
    Op.CONNECT: SessionServer._op_connect,
    Op.LISTEN: SessionServer._op_listen,
    Op.ACCEPT: SessionServer._op_accept,
    Op.CLOSE: SessionServer._op_close,
    Op.SHUTDOWN_WR: SessionServer._op_shutdown,
    Op.UDP_BIND: SessionServer._op_bind,
    Op.UDP_SENDTO: SessionServer._op_sendto,
    Op.UDP_RECVFROM: SessionServer._op_recvfrom,
    Op.CANCEL: SessionServer._op_cancel,
}


def _listening(path: str) -> bool:
    """Whether a live server answers on `path` (else the socket file is stale)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True

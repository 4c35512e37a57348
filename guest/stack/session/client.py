"""The application's side: a socket-like API over a session with the stack server.

    client = StackClient("/run/stackbed/stack-eth1.sock")   # or "@stack-eth1" (abstract)
    sock = client.connect(("198.18.1.2", 5001), timeout=5)
    sock.sendall(data); n = sock.recv_into(buf); sock.shutdown_write(); sock.close()
    listener = client.listen(5001); conn, peer = listener.accept(timeout=10)

Stream data never crosses the control socket: `sendall` copies into the socket's transmit ring
(one copy) and rings the stack only if it sleeps; `recv_into` copies out of the receive ring
(the copy the socket API implies). Blocking is built on the doorbells (spin briefly, then sleep
on the eventfd) and also wakes when the server dies. Errors are the built-in socket ones:
`OSError(errno)` becomes `ConnectionRefusedError`, `ConnectionResetError`, `BrokenPipeError`,
`TimeoutError`, ... by Python's own errno mapping.

Threads: the control channel is shared safely (replies are matched by request id); a given
StackSocket is used by one thread at a time, as its doorbell has one sleeper.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Final, Generic, TypeVar

from .channel import CHANNEL_FDS, ChannelLayout, ClientChannel
from .doorbell import SLICE, BellStats, PeerGone, Waiter
from .protocol import (
    MAGIC,
    MAX_DATAGRAM,
    MAX_MESSAGE,
    NOREPLY,
    REPLY,
    VERSION,
    Message,
    Op,
    ProtocolError,
    int_to_ip,
    ip_to_int,
    unix_address,
    unpack_geometry,
)
from .ring import BytesLike
from .shm import fence
from .stream import byte_view

#: How long a cancelled request may take to be answered before the server is declared hung.
CANCEL_GRACE: Final = 5.0

Address = tuple[str, int]
T = TypeVar("T")


def _error(code: int, what: str = "") -> OSError:
    """OSError(code) is the right subclass already (ECONNREFUSED -> ConnectionRefusedError)."""
    message = os.strerror(code)
    return OSError(code, f"{message}: {what}" if what else message)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _Control:
    """Request/reply over the SEQPACKET control socket, usable from several threads: one
    waiting thread at a time reads and files replies by request id for the others."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[int, tuple[Message, list[int]]] = {}
        self._reading = False
        self._dead = False
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    @property
    def dead(self) -> bool:
        return self._dead

    def send(self, msg: Message) -> None:
        try:
            with self._send_lock:
                self.sock.send(msg.encode())
        except OSError as exc:
            self._dead = True
            raise _error(errno.ECONNRESET, "stack server went away") from exc

    def submit(self, msg: Message) -> int:
        """Send a request without waiting; its id, for `collect`."""
        msg = replace(msg, req_id=next(self._ids))
        self.send(msg)
        return msg.req_id

    def collect(self, req_id: int) -> tuple[Message, list[int]] | None:
        """The reply to `req_id` if it has come, reading whatever replies wait on the socket
        first; never blocks (None: not yet). ConnectionResetError once the server is gone."""
        with self._cond:
            if req_id in self._replies:
                return self._replies.pop(req_id)
            reader = not self._reading and not self._dead
            if reader:
                self._reading = True
        if reader:
            try:
                while not self._dead and self._poll.poll(0):
                    self._read_one(0.0)
            finally:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()
        with self._cond:
            if req_id in self._replies:
                return self._replies.pop(req_id)
            if self._dead:
                raise _error(errno.ECONNRESET, "stack server went away")
        return None

    def hung_up(self) -> None:
        """The socket reported a hang-up: the server is gone (replies already read stay)."""
        self._dead = True

    def call(self, msg: Message, timeout: float | None) -> tuple[Message, list[int]]:
        """Send a request and wait for its reply (fds included). On timeout the request is
        cancelled, and its reply (usually ETIMEDOUT, or the result if it won the race) is
        still awaited, so no reply is ever left unclaimed."""
        req_id = self.submit(msg)
        got = self._await(req_id, timeout)
        if got is None:
            self.send(Message(Op.CANCEL, flags=NOREPLY, arg=req_id))
            got = self._await(req_id, CANCEL_GRACE)
            if got is None:
                raise _error(errno.ETIMEDOUT, "stack server does not answer")
        return got

    def _await(self, req_id: int, timeout: float | None) -> tuple[Message, list[int]] | None:
        deadline = _deadline(timeout)
        while True:
            with self._cond:
                while True:
                    if req_id in self._replies:
                        return self._replies.pop(req_id)
                    if self._dead:
                        raise _error(errno.ECONNRESET, "stack server went away")
                    remaining = _remaining(deadline)
                    if remaining == 0.0:
                        return None
                    if not self._reading:
                        self._reading = True
                        break
                    self._cond.wait(remaining)
            try:
                self._read_one(remaining)
            finally:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()

    def _read_one(self, timeout: float | None) -> None:
        if not self._poll.poll(None if timeout is None else timeout * 1000.0):
            return
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, CHANNEL_FDS)
        except OSError:
            data, fds, flags = b"", [], 0
        if not data:
            self._dead = True
            return
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ProtocolError("truncated reply")
            msg = Message.decode(data)
            if not msg.flags & REPLY:
                raise ProtocolError("not a reply")
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            return
        with self._cond:
            self._replies[msg.req_id] = (msg, fds)

    def close(self) -> None:
        self._dead = True
        self.sock.close()


class StackClient:
    """A session with the stack server at `path` ('@name' for an abstract socket name).

    `timeout` bounds control operations that need no network (listen, bind, ...); connect and
    accept take their own. `spin` is how long blocking calls spin before sleeping (default: a
    little on SMP, none on one CPU); `always_ring` disables doorbell suppression (benchmarks).
    """

    def __init__(
        self,
        path: str,
        *,
        timeout: float | None = 10.0,
        spin: float | None = None,
        always_ring: bool = False,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.spin = spin
        self.always_ring = always_ring
        self.bell_stats = BellStats()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(unix_address(path))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._control = _Control(sock)
        try:
            reply, fds = self._control.call(Message(Op.HELLO, arg=VERSION, payload=MAGIC), timeout)
            _close_all(fds)
            if reply.status:
                raise _error(reply.status, "session refused")
        except BaseException:
            self._control.close()
            raise
        self.session_id = reply.sock_id

    def __enter__(self) -> StackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the session: the server aborts whatever sockets are still open."""
        self._control.close()

    def _call(self, msg: Message, timeout: float | None) -> tuple[Message, list[int]]:
        reply, fds = self._control.call(msg, timeout)
        if reply.status:
            _close_all(fds)
            raise _error(reply.status)
        return reply, fds

    def _channel(self, reply: Message, fds: list[int]) -> ClientChannel:
        if len(fds) != CHANNEL_FDS:
            _close_all(fds)
            raise _error(errno.EPROTO, "reply without channel fds")
        try:
            tx, rx = unpack_geometry(reply.payload)
        except ProtocolError as exc:
            _close_all(fds)
            raise _error(errno.EPROTO, str(exc)) from exc
        return ClientChannel(
            ChannelLayout(tx, rx),
            fds,
            hangup_fd=self._control.sock.fileno(),
            stats=self.bell_stats,
            always_ring=self.always_ring,
            spin=self.spin,
        )

    def connect(self, address: Address, timeout: float | None = None) -> StackSocket:
        """Open a TCP connection; the socket inherits `timeout` (like socket.create_connection).
        Raises ConnectionRefusedError, TimeoutError, ..."""
        reply, fds = self._call(self._connect_message(address), timeout)
        return self._connected(address, timeout, reply, fds)

    def connect_start(self, address: Address) -> Pending[StackSocket]:
        """Start a connect without waiting for it (for an event loop over many sockets): the
        result is a socket without timeout, or the error connect() raises."""
        req_id = self._control.submit(self._connect_message(address))
        return Pending(self, req_id, lambda reply, fds: self._connected(address, None, reply, fds))

    @staticmethod
    def _connect_message(address: Address) -> Message:
        host, port = address
        return Message(Op.CONNECT, ip=ip_to_int(host), port=port)

    def _connected(
        self, address: Address, timeout: float | None, reply: Message, fds: list[int]
    ) -> StackSocket:
        channel = self._channel(reply, fds)
        local = (int_to_ip(reply.ip), reply.port)
        return StackSocket(self, reply.sock_id, channel, local, address, timeout)

    def listen(self, port: int, backlog: int = 16) -> StackListener:
        reply, _ = self._call(Message(Op.LISTEN, port=port, arg=backlog), self.timeout)
        return StackListener(self, reply.sock_id, reply.port)

    def udp_bind(self, port: int = 0) -> StackDatagramSocket:
        reply, _ = self._call(Message(Op.UDP_BIND, port=port), self.timeout)
        return StackDatagramSocket(self, reply.sock_id, reply.port)

    def _close_id(self, sock_id: int) -> None:
        if not self._control.dead:
            with contextlib.suppress(OSError):  # the server is gone: nothing left to close
                self._control.send(Message(Op.CLOSE, flags=NOREPLY, sock_id=sock_id))


class StackSocket:
    """A connected TCP socket of the user-level stack."""

    def __init__(
        self,
        client: StackClient,
        sock_id: int,
        channel: ClientChannel,
        local: Address,
        peer: Address,
        timeout: float | None,
    ) -> None:
        self._client = client
        self.sock_id = sock_id
        self._channel: ClientChannel | None = channel
        self.local = local
        self.peer = peer
        self._timeout = timeout
        self._shut_wr = False
        self._released = 0

    def __enter__(self) -> StackSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StackSocket id={self.sock_id} {self.local} -> {self.peer}>"

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def getpeername(self) -> Address:
        return self.peer

    def getsockname(self) -> Address:
        return self.local

    def _open(self) -> ClientChannel:
        if self._channel is None:
            raise _error(errno.EBADF)
        return self._channel

    def _wait(self, waiter: Waiter, cond: Callable[[], bool], deadline: float | None) -> None:
        try:
            ok = waiter.wait(cond, _remaining(deadline))
        except PeerGone:
            raise _error(errno.ECONNRESET, "stack server went away") from None
        if not ok:
            raise TimeoutError("timed out")

    def _send_error(self, channel: ClientChannel) -> OSError | None:
        if self._shut_wr:
            return _error(errno.EPIPE)
        if channel.error:
            return _error(channel.error)
        if channel.closed:
            return _error(errno.EPIPE)
        return None

    def send(self, data: BytesLike) -> int:
        """Queue some of `data` (at least one byte unless it is empty), blocking for room."""
        channel = self._open()
        view = byte_view(data)
        if not view:
            return 0
        deadline = _deadline(self._timeout)
        while True:
            if (exc := self._send_error(channel)) is not None:
                raise exc
            n = channel.tx.write(view)
            if n:
                channel.data_notifier.notify()
                return n
            if channel.tx_ring.corrupt:
                raise _error(errno.EPROTO, "transmit ring corrupt")
            self._wait(
                channel.tx_waiter, lambda: channel.tx_ring.free() > 0 or _dead(channel), deadline
            )

    def sendall(self, data: BytesLike) -> None:
        """Queue all of `data` (the stack sends it in the background), blocking for room."""
        channel = self._open()
        view = byte_view(data)
        deadline = _deadline(self._timeout)
        pos = 0
        while pos < len(view):
            if (exc := self._send_error(channel)) is not None:
                raise exc
            n = channel.tx.write(view[pos:] if pos else view)
            if n:
                pos += n
                channel.data_notifier.notify()
                continue
            if channel.tx_ring.corrupt:
                raise _error(errno.EPROTO, "transmit ring corrupt")
            self._wait(
                channel.tx_waiter, lambda: channel.tx_ring.free() > 0 or _dead(channel), deadline
            )

    def recv_into(self, buffer: BytesLike, nbytes: int = 0) -> int:
        """Read up to `nbytes` (default len(buffer)) received bytes; 0 at end of stream."""
        channel = self._open()
        target = byte_view(buffer)
        if nbytes:
            target = target[:nbytes]
        if not target:
            return 0
        deadline = _deadline(self._timeout)
        rx = channel.rx
        while True:
            n = rx.read_into(target)
            if n:
                if rx.released != self._released:
                    self._released = rx.released
                    channel.space_notifier.notify()  # the stack may wait for room to deliver
                return n
            err, eof, closed = channel.error, channel.eof, channel.closed  # before the ring:
            if rx.readable():  # the stack stores status after the data it delivered
                continue
            if channel.rx_ring.corrupt:
                raise _error(errno.EPROTO, "receive ring corrupt")
            if err:
                raise _error(err)
            if eof or closed:
                return 0
            self._wait(
                channel.rx_waiter, lambda: rx.readable() or _dead(channel) or channel.eof, deadline
            )

    def readable(self) -> bool:
        """recv_into() would not block: data, end of stream, an error, or the server gone."""
        channel = self._open()
        return (
            channel.rx.readable()
            or channel.eof
            or _dead(channel)
            or channel.rx_ring.corrupt
            or self._client._control.dead
        )

    def writable(self) -> bool:
        """send() would not block: room in the transmit ring, or an error to raise."""
        channel = self._open()
        return (
            channel.tx_ring.free() > 0
            or self._send_error(channel) is not None
            or channel.tx_ring.corrupt
            or self._client._control.dead
        )

    def recv(self, bufsize: int) -> bytes:
        buf = bytearray(bufsize)
        n = self.recv_into(buf)
        del buf[n:]
        return bytes(buf)

    def shutdown_write(self) -> None:
        """Send FIN after everything queued so far; later sends raise BrokenPipeError."""
        self._open()
        if self._shut_wr:
            return
        self._shut_wr = True
        self._client._call(Message(Op.SHUTDOWN_WR, sock_id=self.sock_id), self._client.timeout)

    def close(self) -> None:
        """Close without blocking: queued data is still sent, then FIN (or RST if received
        data was left unread, as Linux does)."""
        channel, self._channel = self._channel, None
        if channel is None:
            return
        self._client._close_id(self.sock_id)
        channel.close()


def _dead(channel: ClientChannel) -> bool:
    return bool(channel.error or channel.closed)


class Pending(Generic[T]):
    """A control request sent without waiting for its reply (`connect_start`, `accept_start`):
    `done()` polls for the reply without blocking, `result()` then gives what the blocking call
    would have returned (or raises its error). `cancel()` asks the server to give up; the reply
    still comes (usually ETIMEDOUT), so a cancelled request is still collected, and whatever it
    yields closed."""

    def __init__(
        self, client: StackClient, req_id: int, finish: Callable[[Message, list[int]], T]
    ) -> None:
        self._client = client
        self._req_id = req_id
        self._finish = finish
        self._reply: tuple[Message, list[int]] | None = None
        self._error: OSError | None = None
        self.cancelled = False

    def fileno(self) -> int:
        """The control socket the reply comes on (readable when a reply may have come)."""
        return self._client._control.sock.fileno()

    def done(self) -> bool:
        if self._reply is None and self._error is None:
            try:
                self._reply = self._client._control.collect(self._req_id)
            except OSError as exc:
                self._error = exc
        return self._reply is not None or self._error is not None

    def result(self) -> T:
        """What the request gave: call once, after done() said True."""
        if self._error is not None:
            raise self._error
        if self._reply is None:
            raise _error(errno.EINPROGRESS)
        (reply, fds), self._reply = self._reply, None
        self._error = _error(errno.EBADF, "result already taken")
        if reply.status:
            _close_all(fds)
            raise _error(reply.status)
        return self._finish(reply, fds)

    def cancel(self) -> None:
        if not self.cancelled and not self.done():
            self.cancelled = True
            self._client._control.send(Message(Op.CANCEL, flags=NOREPLY, arg=self._req_id))


def wait_any(
    readers: Iterable[StackSocket] = (),
    writers: Iterable[StackSocket] = (),
    pending: Iterable[Pending] = (),
    timeout: float | None = None,
) -> bool:
    """Block until one of `readers` is readable, one of `writers` writable, or one of the
    `pending` requests answered (True), or `timeout` passes (False): the many-socket form of
    the blocking calls' wait, for an event loop in one thread.

    The doorbell rules of `Waiter` apply to each socket: its sleep flag is armed (a fresh
    epoch), then every condition re-checked, and only then does poll() sleep on all their
    eventfds at once, with the control sockets (replies, and the server's hang-up). Bells
    that rang are drained after the flags are cleared.
    """
    waits: list[tuple[Waiter, Callable[[], bool]]] = []
    controls: dict[int, _Control] = {}
    for sock in readers:
        waits.append((sock._open().rx_waiter, sock.readable))
        controls[sock._client._control.sock.fileno()] = sock._client._control
    for sock in writers:
        waits.append((sock._open().tx_waiter, sock.writable))
        controls[sock._client._control.sock.fileno()] = sock._client._control
    requests = list(pending)
    for req in requests:
        controls[req.fileno()] = req._client._control

    def ready() -> bool:
        return any(cond() for _, cond in waits) or any(req.done() for req in requests)

    if ready():
        return True
    deadline = _deadline(timeout)
    poller = select.poll()
    bells: dict[int, Waiter] = {}
    for waiter, _ in waits:
        bells[waiter.bell.fd] = waiter
        poller.register(waiter.bell.fd, select.POLLIN)
    for fd in controls:
        poller.register(fd, select.POLLIN if requests else select.POLLRDHUP)
    while True:
        for waiter in bells.values():
            waiter.flag.arm()
        fence()  # our flags (stores) before re-reading the conditions (loads)
        if ready():
            for waiter in bells.values():
                waiter.flag.disarm()
            return True
        remaining = _remaining(deadline)
        if remaining == 0.0:
            for waiter in bells.values():
                waiter.flag.disarm()
            return False
        events = poller.poll(min(SLICE, SLICE if remaining is None else remaining) * 1000.0)
        for waiter in bells.values():
            waiter.flag.disarm()
        fence()  # a notifier that saw our old epoch skipped its ring: we must see its data
        for fd, ev in events:
            if fd in bells:
                bells[fd].bell.drain()
            elif ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR):
                controls[fd].hung_up()
        if ready():
            return True


class StackListener:
    """A listening TCP socket of the user-level stack."""

    def __init__(self, client: StackClient, sock_id: int, port: int) -> None:
        self._client = client
        self.sock_id = sock_id
        self.port = port
        self._closed = False

    def __enter__(self) -> StackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def accept(self, timeout: float | None = None) -> tuple[StackSocket, Address]:
        """The next established connection and its peer address; TimeoutError if none comes
        within `timeout` (None: wait for ever). The socket has no timeout."""
        if self._closed:
            raise _error(errno.EBADF)
        reply, fds = self._client._call(Message(Op.ACCEPT, sock_id=self.sock_id), timeout)
        return self._accepted(reply, fds)

    def accept_start(self) -> Pending[tuple[StackSocket, Address]]:
        """Ask for the next connection without waiting for it (for an event loop)."""
        if self._closed:
            raise _error(errno.EBADF)
        req_id = self._client._control.submit(Message(Op.ACCEPT, sock_id=self.sock_id))
        return Pending(self._client, req_id, self._accepted)

    def _accepted(self, reply: Message, fds: list[int]) -> tuple[StackSocket, Address]:
        channel = self._client._channel(reply, fds)
        peer = (int_to_ip(reply.ip), reply.port)
        sock = StackSocket(self._client, reply.sock_id, channel, ("0.0.0.0", self.port), peer, None)
        return sock, peer

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client._close_id(self.sock_id)


class StackDatagramSocket:
    """A bound UDP socket of the user-level stack (datagrams travel on the control socket)."""

    def __init__(self, client: StackClient, sock_id: int, port: int) -> None:
        self._client = client
        self.sock_id = sock_id
        self.port = port
        self._timeout: float | None = None
        self._closed = False

    def __enter__(self) -> StackDatagramSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def sendto(self, data: BytesLike, address: Address) -> int:
        if self._closed:
            raise _error(errno.EBADF)
        payload = bytes(byte_view(data))
        if len(payload) > MAX_DATAGRAM:
            raise _error(errno.EMSGSIZE)
        host, port = address
        msg = Message(
            Op.UDP_SENDTO, sock_id=self.sock_id, ip=ip_to_int(host), port=port, payload=payload
        )
        self._client._call(msg, self._client.timeout)
        return len(payload)

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        """The next datagram (truncated to `bufsize`, as UDP does) and its source."""
        if self._closed:
            raise _error(errno.EBADF)
        msg = Message(Op.UDP_RECVFROM, sock_id=self.sock_id)
        reply, _ = self._client._call(msg, self._timeout)
        return reply.payload[:bufsize], (int_to_ip(reply.ip), reply.port)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client._close_id(self.sock_id)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

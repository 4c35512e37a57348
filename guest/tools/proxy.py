"""A TCP proxy over kernel sockets: the user-space baselines a forwarding extension is measured
against.

A middle node that has to pass a TCP stream on without IP forwarding can terminate each
connection and relay its bytes to the real server. Done over the kernel's sockets, that is what
the extension's design competes with, in two strengths:

* `--mode socket`: the classic relay. Each direction reads into a user-space buffer and writes
  it out again: two system calls and two copies (kernel to user, user to kernel) per chunk.
* `--mode splice`: the same relay with `os.splice()` through a pipe per direction, so the bytes
  move from one socket's receive queue to the other's send queue by page reference, never
  through user space (SPLICE_F_MOVE | SPLICE_F_NONBLOCK). Still two system calls per chunk:
  what remains once the copies are gone.

Both are one single-threaded event loop (`selectors`, epoll on Linux) over all connections,
level-triggered: a readable socket gets one read, and what was read is written on at once as
far as the other side takes it; a direction whose buffer (or pipe) is full stops reading until
it drains, so a slow receiver holds its sender back through TCP flow control, not through our
memory. A half-close is passed on: EOF from one side becomes shutdown(SHUT_WR) towards the
other once everything before it has been written, and the connection is closed when both
directions have ended that way (a peer's reset, or a failed write, closes both sides at once).
At most `--max-conns` connections are relayed at a time; beyond that the listener is left
unserved and new clients wait in the kernel's accept queue.

    python3 -m guest.tools.proxy --mode splice --listen 198.18.80.2:5001 --to 198.18.81.1:5001

It prints `{"event": "ready", ...}` on stdout once listening and, on SIGTERM/SIGINT, a final
`{"event": "stopped", "stats": {...}}` line: connections accepted, completed, failed, and
aborted by the stop, and per direction the bytes relayed, the system calls that moved them
(reads and writes: recv/send, or splice in and out of the pipe, including those that found
nothing to do) and the bytes that passed through user space (0 with splice). Every socket, pipe
and the selector are closed on the way out, however it is left; `fds_leaked` counts file
descriptors open at the end that were not open at the start, as a check of exactly that.
A bad address or a listen port in use is reported on stderr with exit status 1.

`guest.tools.stack_proxy` relays the same way on our own stack and takes from here what the two
share: the connection counters and their report, the event lines and the common options.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from .cli import non_negative_int, positive_int, stop_on_signals

MODES = ("socket", "splice")
DIRECTIONS = ("client_to_server", "server_to_client")
#: Per direction: the user-space buffer (socket mode) or the pipe's capacity (splice mode).
DEFAULT_BUFFER = 1 << 20
DEFAULT_MAX_CONNS = 64
LISTEN_BACKLOG = 128
#: Longest wait for an event, so that a stop request is seen even when nothing happens.
IDLE_POLL_S = 0.1
SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>; root may exceed net.core.wmem_max
SO_RCVBUFFORCE = 33  # ... and net.core.rmem_max
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_EXIT_SETUP_ERROR = 1


class ProxyError(Exception):
    """The proxy cannot start (bad address, port in use, no splice): the message says why."""


# ===================================================================== addresses and options


def parse_endpoint(text: str, *, listen: bool) -> tuple[int, tuple[str, int]]:
    """(address family, sockaddr) for `HOST:PORT` (`[V6]:PORT` for IPv6); port 0 only to listen.

    Names are resolved once, here, so that a typo fails at start rather than on the first
    client; the first address the resolver gives is the one used.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not (0 if listen else 1) <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def endpoint_arg(listen: bool) -> Callable[[str], tuple[int, tuple[str, int]]]:
    """`parse_endpoint` as an argparse type."""

    def parse(text: str) -> tuple[int, tuple[str, int]]:
        try:
            return parse_endpoint(text, listen=listen)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "address"  # argparse names the type in its error message
    return parse


def set_socket_buffers(sock: socket.socket, size: int) -> None:
    """SO_RCVBUF and SO_SNDBUF of `sock` to `size` (beyond the sysctl caps when root).

    Setting them turns the kernel's autotuning off for that socket, which is why it is an
    option (`--sock-buf`, 0 = leave autotuning on) rather than always done.
    """
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:  # not privileged: the kernel caps it at net.core.[rw]mem_max
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def splice_unavailable() -> str | None:
    """Why splice cannot be used here, or None if a splice between two pipes works."""
    if not hasattr(os, "splice"):
        return "os.splice() is missing (it needs Python 3.10+ on Linux)"
    fds: list[int] = []
    try:
        r1, w1 = os.pipe()
        fds += (r1, w1)
        r2, w2 = os.pipe()
        fds += (r2, w2)
        os.write(w1, b"x")
        if os.splice(r1, w2, 1, flags=_SPLICE_FLAGS) != 1:
            return "splice() moved nothing in a test between two pipes"
    except OSError as exc:
        return f"splice() fails here: {exc.strerror}"
    finally:
        for fd in fds:
            os.close(fd)
    return None


def open_pipe(size: int) -> tuple[int, int]:
    """A non-blocking pipe (read end, write end) holding up to about `size` bytes.

    Root may exceed fs.pipe-max-size; anyone else gets what that allows. Its capacity counts
    pages: a splice from a socket may fill it with fewer bytes than that (one skb fragment per
    slot), which the pump below allows for.
    """
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        with contextlib.suppress(OSError), open("/proc/sys/fs/pipe-max-size") as f:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, min(size, int(f.read())))
    return r, w


# ===================================================================== one direction


@dataclass(slots=True)
class DirectionStats:
    """What one direction did, summed over every connection."""

    #: Bytes written to the receiving side (equal to bytes read, once a connection has ended).
    bytes: int = 0
    #: System calls reading from the sending socket: recv_into, or splice into the pipe.
    reads: int = 0
    #: System calls writing to the receiving socket: send, or splice out of the pipe.
    writes: int = 0
    #: Of those, the calls that found nothing to do (EAGAIN).
    would_block: int = 0
    #: Bytes that passed through user space (each copied in, then out again): 0 with splice.
    user_copy_bytes: int = 0
    #: EOFs passed on as shutdown(SHUT_WR) to the other side.
    half_closes: int = 0

    def as_dict(self) -> dict[str, int]:
        out = asdict(self)
        out["syscalls"] = self.reads + self.writes
        return out


class Pump:
    """Moves bytes from `src` to `dst` and passes its EOF on; the buffering is the subclass's.

    `fill()` and `flush()` each make at most the system calls a readiness event justifies;
    `wants_read` and `wants_write` say which events the pump waits for now.
    """

    def __init__(self, src: socket.socket, dst: socket.socket, stats: DirectionStats) -> None:
        self.src = src
        self.dst = dst
        self.stats = stats
        #: The sender's EOF was read.
        self.eof = False
        #: ... and passed on: nothing more will move this way.
        self.done = False

    @property
    def pending(self) -> int:
        raise NotImplementedError

    @property
    def wants_read(self) -> bool:
        raise NotImplementedError

    @property
    def wants_write(self) -> bool:
        return self.pending > 0

    def fill(self) -> None:
        """One read from `src`; EOF noted."""
        raise NotImplementedError

    def flush(self) -> None:
        """Write what is pending to `dst` until done or `dst` is full; pass EOF on once all
        before it is written. OSError (reset, broken pipe) ends the connection."""
        raise NotImplementedError

    def _pass_eof_on(self) -> None:
        if self.eof and not self.done and self.pending == 0:
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:  # the receiver has gone already: nothing to do
                    raise
            self.stats.half_closes += 1
            self.done = True

    def close(self) -> None:
        """Release what the pump owns beyond the two sockets (the connection closes those)."""


class CopyPump(Pump):
    """Socket mode: recv_into a buffer, send from it."""

    def __init__(
        self, src: socket.socket, dst: socket.socket, stats: DirectionStats, size: int
    ) -> None:
        super().__init__(src, dst, stats)
        self._view = memoryview(bytearray(size))
        self._start = 0  # first byte not yet written
        self._end = 0  # one past the last byte read

    @property
    def pending(self) -> int:
        return self._end - self._start

    @property
    def wants_read(self) -> bool:
        return not self.eof and self._end < len(self._view)

    def fill(self) -> None:
        self.stats.reads += 1
        try:
            n = self.src.recv_into(self._view[self._end :])
        except (BlockingIOError, InterruptedError):
            self.stats.would_block += 1
            return
        if n == 0:
            self.eof = True
        self._end += n
        self.stats.user_copy_bytes += n

    def flush(self) -> None:
        while self._start < self._end:
            self.stats.writes += 1
            try:
                n = self.dst.send(self._view[self._start : self._end])
            except (BlockingIOError, InterruptedError):
                self.stats.would_block += 1
                return
            self._start += n
            self.stats.bytes += n
            if self._start < self._end:  # a partial send: the send queue is full
                return
        self._start = self._end = 0
        self._pass_eof_on()


class SplicePump(Pump):
    """Splice mode: socket -> pipe -> socket, the bytes never leaving the kernel."""

    def __init__(
        self, src: socket.socket, dst: socket.socket, stats: DirectionStats, size: int
    ) -> None:
        super().__init__(src, dst, stats)
        self._r, self._w = open_pipe(size)
        self._capacity = fcntl.fcntl(self._w, fcntl.F_GETPIPE_SZ)
        self._pending = 0
        #: A splice in found no room although the pipe holds fewer bytes than its capacity
        #: (its slots are full of partial pages): read again only once something drained.
        self._full = False

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def wants_read(self) -> bool:
        return not self.eof and not self._full and self._pending < self._capacity

    def fill(self) -> None:
        self.stats.reads += 1
        try:
            n = os.splice(
                self.src.fileno(), self._w, self._capacity - self._pending, flags=_SPLICE_FLAGS
            )
        except (BlockingIOError, InterruptedError):
            self.stats.would_block += 1
            # Readiness said there is data: if the pipe holds some, it is the pipe that is full.
            self._full = self._pending > 0
            return
        if n == 0:
            self.eof = True
        self._pending += n

    def flush(self) -> None:
        while self._pending > 0:
            self.stats.writes += 1
            try:
                n = os.splice(self._r, self.dst.fileno(), self._pending, flags=_SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                self.stats.would_block += 1
                return
            self._pending -= n
            self.stats.bytes += n
            self._full = False
            if self._pending > 0:
                return
        self._pass_eof_on()

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._r = self._w = -1


# ===================================================================== connections and the loop


class Connection:
    """One client, its socket to the server, and a pump each way."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.connecting = True
        self.pumps: tuple[Pump, ...] = ()
        #: fd -> events registered with the selector (absent: not registered).
        self.registered: dict[int, int] = {}


@dataclass(slots=True)
class ConnectionStats:
    accepted: int = 0
    #: Both directions ended with an EOF passed on.
    completed: int = 0
    #: The server refused or was unreachable, or a side reset or failed a write.
    failed: int = 0
    #: Still open when the proxy was stopped (closed then).
    aborted: int = 0
    #: Most connections relayed at once.
    max_active: int = 0

    def ended(self, *, failed: bool) -> None:
        """Count a relayed connection that has ended."""
        if failed:
            self.failed += 1
        else:
            self.completed += 1


def connection_report(
    conns: ConnectionStats, directions: Iterable[dict[str, int]]
) -> dict[str, object]:
    """The counters of a proxy's `stats()`: connections, then each direction's (DIRECTIONS)."""
    out: dict[str, object] = {"connections": asdict(conns)}
    out.update(zip(DIRECTIONS, directions, strict=True))
    return out


def log_event(event: str, **fields: object) -> None:
    """An event worth knowing (a failed connection, say) as a JSON line on stderr."""
    sys.stderr.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


class Proxy:
    """The listener, every connection, and the counters; `serve()` runs the loop."""

    def __init__(
        self,
        mode: str,
        listen: tuple[int, tuple[str, int]],
        to: tuple[int, tuple[str, int]],
        *,
        max_conns: int = DEFAULT_MAX_CONNS,
        buffer: int = DEFAULT_BUFFER,
        sock_buf: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ProxyError(f"unknown mode {mode!r}")
        if mode == "splice" and (why := splice_unavailable()) is not None:
            raise ProxyError(f"splice mode unavailable: {why}")
        self.mode = mode
        self.to = to
        self.max_conns = max_conns
        self.buffer = buffer
        self.sock_buf = sock_buf
        self.conns = ConnectionStats()
        self.directions = (DirectionStats(), DirectionStats())
        self._active: dict[int, Connection] = {}  # by client fd
        self._selector = selectors.DefaultSelector()
        self._listening = False
        family, addr = listen
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sock_buf:
                set_socket_buffers(self.listener, sock_buf)  # accepted sockets inherit them
            try:
                self.listener.bind(addr)
                self.listener.listen(LISTEN_BACKLOG)
            except OSError as exc:
                raise ProxyError(f"cannot listen on {addr[0]}:{addr[1]}: {exc.strerror}") from None
            self.listener.setblocking(False)
            self._listen(True)
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def active(self) -> int:
        return len(self._active)

    # ----------------------------------------------------------------- the loop

    def serve(self, should_stop: Callable[[], bool]) -> None:
        """Relay until `should_stop()`; connections still open then stay open (see close())."""
        while not should_stop():
            for key, events in self._selector.select(IDLE_POLL_S):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    conn, sock = key.data
                    if self._active.get(conn.client.fileno()) is conn:  # still open
                        self._service(conn, sock, events)

    def _listen(self, on: bool) -> None:
        """Serve the listener or leave it (at --max-conns): clients then wait in its queue."""
        if on and not self._listening:
            self._selector.register(self.listener, selectors.EVENT_READ)
        elif not on and self._listening:
            self._selector.unregister(self.listener)
        self._listening = on

    def _accept(self) -> None:
        while len(self._active) < self.max_conns:
            try:
                client, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNABORTED, EMFILE: that client is lost, not us
                log_event("accept_failed", error=exc.strerror)
                return
            self.conns.accepted += 1
            self._open(client)
        self._listen(False)

    def _open(self, client: socket.socket) -> None:
        family, addr = self.to
        server = None
        try:
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.socket(family, socket.SOCK_STREAM)
            server.setblocking(False)
            # The ends decide how they batch; the proxy must not add Nagle's delay of its own.
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sock_buf:
                set_socket_buffers(server, self.sock_buf)
            err = server.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            self.conns.failed += 1
            log_event("connect_failed", error=exc.strerror, to=f"{addr[0]}:{addr[1]}")
            client.close()
            if server is not None:
                server.close()
            return
        conn = Connection(client, server)
        self._active[client.fileno()] = conn
        self.conns.max_active = max(self.conns.max_active, len(self._active))
        self._update(conn)

    def _connected(self, conn: Connection) -> None:
        """The server's connect finished: fail the connection, or give it its pumps."""
        err = conn.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        conn.connecting = False
        pump = CopyPump if self.mode == "socket" else SplicePump
        up, down = self.directions
        first = pump(conn.client, conn.server, up, self.buffer)
        try:
            conn.pumps = (first, pump(conn.server, conn.client, down, self.buffer))
        except BaseException:
            first.close()
            raise

    def _service(self, conn: Connection, sock: socket.socket, events: int) -> None:
        try:
            if conn.connecting:
                self._connected(conn)
            else:
                for pump in conn.pumps:
                    if events & selectors.EVENT_READ and pump.src is sock and pump.wants_read:
                        pump.fill()
                        pump.flush()  # at once: the receiving side is usually ready
                    elif events & selectors.EVENT_WRITE and pump.dst is sock:
                        pump.flush()
        except OSError as exc:
            log_event("connection_failed", error=exc.strerror or str(exc))
            self._finish(conn, failed=True)
            return
        if conn.pumps and all(p.done for p in conn.pumps):
            self._finish(conn, failed=False)
        else:
            self._update(conn)

    def _update(self, conn: Connection) -> None:
        """Register each socket for the events its pumps wait for now (none: unregistered)."""
        want = {conn.client.fileno(): 0, conn.server.fileno(): 0}
        if conn.connecting:
            want[conn.server.fileno()] = selectors.EVENT_WRITE
        for pump in conn.pumps:
            if pump.wants_read:
                want[pump.src.fileno()] |= selectors.EVENT_READ
            if pump.wants_write:
                want[pump.dst.fileno()] |= selectors.EVENT_WRITE
        for sock in (conn.client, conn.server):
            fd = sock.fileno()
            old, new = conn.registered.get(fd, 0), want[fd]
            if old == new:
                continue
            if not new:
                self._selector.unregister(sock)
                del conn.registered[fd]
            elif not old:
                self._selector.register(sock, new, (conn, sock))
                conn.registered[fd] = new
            else:
                self._selector.modify(sock, new, (conn, sock))
                conn.registered[fd] = new

    def _finish(self, conn: Connection, *, failed: bool) -> None:
        self._drop(conn)
        self.conns.ended(failed=failed)
        self._listen(True)

    def _drop(self, conn: Connection) -> None:
        """Unregister and close everything the connection holds."""
        self._active.pop(conn.client.fileno(), None)
        for sock in (conn.client, conn.server):
            if sock.fileno() in conn.registered:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
        conn.registered.clear()
        for pump in conn.pumps:
            pump.close()
        conn.client.close()
        conn.server.close()

    # ----------------------------------------------------------------- the end

    def close(self) -> None:
        """Close every connection (counted as aborted), the listener and the selector.
        Idempotent, and safe on a half-built proxy."""
        for conn in list(self._active.values()):
            self._drop(conn)
            self.conns.aborted += 1
        self._active.clear()
        if self._listening:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.listener)
            self._listening = False
        self.listener.close()
        self._selector.close()

    def stats(self) -> dict[str, object]:
        return connection_report(self.conns, (d.as_dict() for d in self.directions))


# ===================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python3 -m guest.tools.proxy",
        description="Relay TCP connections to one server over kernel sockets (copy or splice).",
    )
    ap.add_argument(
        "--mode", choices=MODES, default="socket", help="relay by copying or by splice()"
    )
    ap.add_argument(
        "--listen",
        required=True,
        type=endpoint_arg(listen=True),
        metavar="ADDR:PORT",
        help="where clients connect (port 0: pick a free one)",
    )
    ap.add_argument(
        "--to",
        required=True,
        type=endpoint_arg(listen=False),
        metavar="HOST:PORT",
        help="the real server",
    )
    add_relay_options(ap, buffer_help="per direction: user buffer (socket) or pipe size (splice)")
    ap.add_argument(
        "--sock-buf",
        type=non_negative_int,
        default=0,
        metavar="BYTES",
        help="SO_RCVBUF and SO_SNDBUF of every socket (default 0: kernel autotuning)",
    )
    return ap


def add_relay_options(ap: argparse.ArgumentParser, *, buffer_help: str) -> None:
    """--max-conns and --buffer (`buffer_help`: what the buffer is, its default added)."""
    ap.add_argument(
        "--max-conns",
        type=positive_int,
        default=DEFAULT_MAX_CONNS,
        help="connections relayed at once (default %(default)d); more wait to be accepted",
    )
    ap.add_argument(
        "--buffer",
        type=positive_int,
        default=DEFAULT_BUFFER,
        metavar="BYTES",
        help=f"{buffer_help} (default %(default)d)",
    )


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fds_before = _open_fds()
    should_stop = stop_on_signals()
    try:
        proxy = Proxy(
            args.mode,
            args.listen,
            args.to,
            max_conns=args.max_conns,
            buffer=args.buffer,
            sock_buf=args.sock_buf,
        )
    except ProxyError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return _EXIT_SETUP_ERROR
    try:
        host, port = proxy.address
        ready = {
            "event": "ready",
            "mode": args.mode,
            "listen": f"{host}:{port}",
            "to": f"{args.to[1][0]}:{args.to[1][1]}",
            "max_conns": args.max_conns,
            "buffer": args.buffer,
            "sock_buf": args.sock_buf,
            "pid": os.getpid(),
        }
        print(json.dumps(ready), flush=True)
        started = time.monotonic()
        proxy.serve(should_stop)
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    stats = proxy.stats()
    stats["fds_leaked"] = len(_open_fds() - fds_before)
    final = {"event": "stopped", "mode": args.mode, "elapsed_s": round(elapsed, 3), "stats": stats}
    print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

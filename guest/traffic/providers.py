"""Socket providers: one per network-stack "path" under test, behind a minimal interface.

The workloads only use :class:`SocketProvider`/:class:`Listener`/:class:`Stream`, so plugging in
the user-level ``mono``/``factored`` stacks later is one :data:`PROVIDERS` entry.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from .errors import TrafficError, describe_error

# Connect errors worth retrying: the peer's listener (or its interface/route) may not be up yet.
_RETRYABLE_CONNECT_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET}
)
_CONNECT_MIN_ATTEMPT_S = 1.0
_CONNECT_BACKOFF_START_S = 0.05
_CONNECT_BACKOFF_MAX_S = 0.5


# --------------------------------------------------------------------------------------------
# Socket providers ("paths")
# --------------------------------------------------------------------------------------------


class Stream(Protocol):
    """A connected byte stream.

    Implementations raise :class:`OSError` subclasses on failure (``TimeoutError`` when the idle
    timeout expires, ``ConnectionRefusedError`` etc.), exactly like kernel sockets do, so the
    workloads and the error reporting stay path-independent.
    """

    def sendall(self, data: bytes | memoryview) -> None: ...

    def recv_into(self, buf: memoryview) -> int:
        """Fill at most ``len(buf)`` bytes; return 0 only at end of stream."""
        ...

    def shutdown_write(self) -> None: ...

    def close(self) -> None: ...


class Listener(Protocol):
    """A passive endpoint; ``port`` is the bound port (matters when port 0 was requested)."""

    port: int

    def accept(self) -> Stream: ...

    def close(self) -> None: ...


class SocketProvider(Protocol):
    """The minimal per-path interface: create+connect and create+listen(+accept).

    Socket creation is folded into ``connect``/``listen`` because the tool never needs an
    unconnected socket; options it cares about (``nodelay``, idle ``timeout``) are parameters.
    ``connect`` is a single attempt: retrying is the tool's policy, not the provider's.
    """

    name: str

    def connect(self, peer: str, port: int, *, timeout: float, nodelay: bool) -> Stream: ...

    def listen(self, bind: str, port: int, *, timeout: float, nodelay: bool) -> Listener: ...


def _timeval(seconds: float) -> bytes:
    """Pack a ``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO."""
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


def _family_for(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


#: struct tcp_info (linux/tcp.h) up to tcpi_total_retrans: eight u8 fields, then u32s.
_TCP_INFO_FORMAT = "8B24I"
_TCP_INFO_LEN = struct.calcsize(_TCP_INFO_FORMAT)
_TOTAL_RETRANS = 8 + 23


class KernelStream:
    """A kernel TCP socket kept in *blocking* mode with kernel-side idle timeouts.

    Python's ``settimeout`` makes every send/recv a poll()+syscall pair, which would inflate
    the very per-operation cost we measure; SO_RCVTIMEO/SO_SNDTIMEO bound stalls for free.  The
    kernel then reports a stall as EAGAIN, which we translate to ``TimeoutError``.
    """

    def __init__(self, sock: socket.socket, *, timeout: float, nodelay: bool) -> None:
        self._sock = sock
        self._timeout = timeout
        sock.settimeout(None)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
        except OSError:  # exotic platform: fall back to Python-level timeouts
            sock.settimeout(timeout)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _stalled(self, what: str) -> TimeoutError:
        return TimeoutError(f"{what} idle for more than {self._timeout:g} s (--timeout)")

    def sendall(self, data: bytes | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except BlockingIOError as exc:
            raise self._stalled("send") from exc

    def recv_into(self, buf: memoryview) -> int:
        try:
            return self._sock.recv_into(buf)
        except BlockingIOError as exc:
            raise self._stalled("recv") from exc

    def shutdown_write(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def tcp_counters(self) -> dict[str, int]:
        """The kernel's own account of this connection (TCP_INFO's total_retrans, the
        figure iperf3 reports), so the kernel path's retransmissions are reported as the
        user-level stacks report theirs."""
        info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        name = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        return {
            "retransmits": struct.unpack_from(_TCP_INFO_FORMAT, info)[_TOTAL_RETRANS],
            "congestion": name.rstrip(b"\0").decode(),
        }

    def close(self) -> None:
        self._sock.close()


class KernelListener:
    """Listening kernel socket; accept is bounded by the idle timeout too."""

    def __init__(self, bind: str, port: int, *, timeout: float, nodelay: bool) -> None:
        self._timeout = timeout
        self._nodelay = nodelay
        self._sock = socket.socket(_family_for(bind), socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((bind, port))
            self._sock.listen(1)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(timeout)
        self.port: int = self._sock.getsockname()[1]

    def accept(self) -> Stream:
        try:
            conn, _addr = self._sock.accept()
        except TimeoutError as exc:
            raise TimeoutError(f"no connection within {self._timeout:g} s (--timeout)") from exc
        return KernelStream(conn, timeout=self._timeout, nodelay=self._nodelay)

    def close(self) -> None:
        self._sock.close()


class KernelProvider:
    """The in-kernel TCP/IP stack, via ordinary BSD sockets; `cc` picks the congestion control
    of the connections it opens (TCP_CONGESTION), else the system's default is used."""

    name = "kernel"

    def __init__(self, cc: str | None = None) -> None:
        self.cc = cc

    def connect(self, peer: str, port: int, *, timeout: float, nodelay: bool) -> Stream:
        sock = socket.socket(_family_for(peer), socket.SOCK_STREAM)
        try:
            if self.cc:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.cc.encode())
            sock.settimeout(timeout)
            sock.connect((peer, port))
            return KernelStream(sock, timeout=timeout, nodelay=nodelay)
        except BaseException:
            sock.close()
            raise

    def listen(self, bind: str, port: int, *, timeout: float, nodelay: bool) -> Listener:
        return KernelListener(bind, port, timeout=timeout, nodelay=nodelay)


# Name -> factory.  Factories (not instances) so a user-level stack is only imported when chosen.
def _kernel(args: object) -> SocketProvider:
    return KernelProvider(getattr(args, "kernel_cc", None))


def _mono(args: object) -> SocketProvider:
    from .userstack import MonoProvider  # imported only when the path is chosen

    return MonoProvider(args)


def _factored(args: object) -> SocketProvider:
    from .userstack import FactoredProvider

    return FactoredProvider(args)


def _floor(args: object) -> SocketProvider:
    from .floor import FloorProvider

    return FloorProvider(args)  # type: ignore[arg-type]


#: Path name -> factory taking the parsed arguments (user-level paths need --iface/--addr).
PROVIDERS: dict[str, Callable[[object], SocketProvider]] = {
    "kernel": _kernel,
    "mono": _mono,
    "factored": _factored,
    "floor": _floor,
}


def connect_with_retry(
    provider: SocketProvider,
    peer: str,
    port: int,
    *,
    connect_timeout: float,
    timeout: float,
    nodelay: bool,
) -> Stream:
    """Connect, retrying transient refusals for ``connect_timeout`` s.

    The orchestrator starts server and client nearly together, so "refused" usually means
    "not listening yet"; errors that cannot heal (bad address, ...) fail at once.
    """
    deadline = time.monotonic() + connect_timeout
    backoff = _CONNECT_BACKOFF_START_S
    attempts = 0
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        attempt_timeout = min(timeout, max(remaining, _CONNECT_MIN_ATTEMPT_S))
        try:
            return provider.connect(peer, port, timeout=attempt_timeout, nodelay=nodelay)
        except OSError as exc:
            retryable = isinstance(exc, TimeoutError) or exc.errno in _RETRYABLE_CONNECT_ERRNOS
            remaining = deadline - time.monotonic()
            if not retryable or remaining <= 0:
                why = describe_error(exc)
                raise TrafficError(
                    f"connect to {peer}:{port} failed after {attempts} attempt(s): {why}"
                ) from exc
        time.sleep(min(backoff, remaining))
        backoff = min(backoff * 2, _CONNECT_BACKOFF_MAX_S)


def recv_exact(stream: Stream, view: memoryview) -> bool:
    """Fill ``view`` completely.  False on a clean EOF before the first byte; raise mid-message."""
    got = 0
    while got < len(view):
        n = stream.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return False
            raise TrafficError(f"peer closed mid-message after {got}/{len(view)} bytes")
        got += n
    return True


def drain_until_eof(stream: Stream) -> int:
    """Wait for the peer's FIN so we only report once it has consumed everything we sent."""
    buf = memoryview(bytearray(4096))
    extra = 0
    while (n := stream.recv_into(buf)) > 0:
        extra += n
    return extra

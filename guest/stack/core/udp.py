"""UDP sockets: port table, bounded receive queues, ephemeral ports.

A socket is bound to a local port on our (only) address and receives every datagram for that
port, unicast or broadcast. Its queue is bounded both in datagrams and in payload bytes, like a
kernel socket's rcvbuf: when the application does not keep up the newest datagram is dropped
and counted (`drops`), which is UDP's contract and what the benchmarks need to see.
Payloads are copied into `bytes` on arrival because the frame buffer belongs to the device.
"""

from __future__ import annotations

import errno
from collections import deque
from typing import Final

from .counters import Counters

EPHEMERAL_FIRST: Final = 32768  # Linux ip_local_port_range
EPHEMERAL_LAST: Final = 60999
DEFAULT_QUEUE_DATAGRAMS: Final = 256
DEFAULT_QUEUE_BYTES: Final = 256 * 1024


class UdpSocket:
    """One bound UDP port and its queue of (payload, source ip, source port)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "datagrams_in",
        "datagrams_out",
        "drops",
        "handle",
        "max_bytes",
        "max_datagrams",
        "port",
        "queue",
        "queued_bytes",
    )

    def __init__(self, handle: int, port: int, max_datagrams: int, max_bytes: int) -> None:
        self.handle = handle
        self.port = port
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.queue: deque[tuple[bytes, int, int]] = deque()
        self.queued_bytes = 0
        self.drops = 0
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def push(self, data: bytes, ip: int, port: int) -> bool:
        """Queue a datagram; False (and counted) when the queue is full."""
        n = len(data)
        if len(self.queue) >= self.max_datagrams or self.queued_bytes + n > self.max_bytes:
            self.drops += 1
            return False
        self.queue.append((data, ip, port))
        self.queued_bytes += n
        self.datagrams_in += 1
        self.bytes_in += n
        return True

    def pop(self) -> tuple[bytes, int, int] | None:
        if not self.queue:
            return None
        item = self.queue.popleft()
        self.queued_bytes -= len(item[0])
        return item

    def info(self) -> dict[str, object]:
        return {
            "kind": "udp",
            "local_port": self.port,
            "queued": len(self.queue),
            "queued_bytes": self.queued_bytes,
            "drops": self.drops,
            "datagrams_in": self.datagrams_in,
            "datagrams_out": self.datagrams_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class UdpTable:
    """Local port -> socket; delivers received datagrams."""

    __slots__ = ("_next_ephemeral", "counters", "max_bytes", "max_datagrams", "ports")

    def __init__(
        self,
        counters: Counters,
        *,
        max_datagrams: int = DEFAULT_QUEUE_DATAGRAMS,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self.counters = counters
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.ports: dict[int, UdpSocket] = {}
        self._next_ephemeral = EPHEMERAL_FIRST

    def bind(self, handle: int, port: int) -> UdpSocket:
        """Bind `port` (0: an ephemeral one). Raises `OSError(EADDRINUSE)` when taken."""
        if port == 0:
            port = self._ephemeral()
        elif not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"bad UDP port {port}")
        elif port in self.ports:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} in use")
        sock = UdpSocket(handle, port, self.max_datagrams, self.max_bytes)
        self.ports[port] = sock
        return sock

    def unbind(self, sock: UdpSocket) -> None:
        if self.ports.get(sock.port) is sock:
            del self.ports[sock.port]

    def deliver(self, dst_port: int, data: memoryview | bytes, src: int, src_port: int) -> int:
        """Queue a received datagram. Returns the receiving handle, -1 when its queue was
        full (counted), 0 when no socket is bound (the caller answers with ICMP)."""
        sock = self.ports.get(dst_port)
        c = self.counters
        if sock is None:
            c.udp_no_port += 1
            return 0
        if not sock.push(bytes(data), src, src_port):
            c.udp_queue_drops += 1
            return -1
        return sock.handle

    def _ephemeral(self) -> int:
        span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1
        for _ in range(span):
            port = self._next_ephemeral
            self._next_ephemeral = port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
            if port not in self.ports:
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no ephemeral UDP port left")

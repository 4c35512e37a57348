"""An in-memory `StackBackend` for tests and benchmarks: no network, classic inetd services.

Connecting to port 7 (echo) returns what was sent, 9 (discard) swallows it (counting and hashing
it), 19 (chargen) sends an endless deterministic pattern (`CHARGEN_BLOCK` repeated); port 1 is a
black hole (the connect never completes: for timeouts); a port some session listens on connects
the two sessions to each other (loopback); any other port is refused. UDP: port 7 echoes, a
port some session bound receives.

It buffers nothing itself: bytes move from one ring to another, and a full destination ring
leaves them in the source ring (`send` takes less), resumed through `rx_space` -> `tx_kick`.
That makes it a faithful test of the boundary's backpressure.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Final

from guest.stack.session.requests import BindReq, ConnectReq, Event, ListenReq, SendToReq
from guest.stack.session.server import SessionServer

ECHO: Final = 7
DISCARD: Final = 9
CHARGEN: Final = 19
BLACKHOLE: Final = 1
LOCAL_IP: Final = 0xC6120001  # 198.18.0.1 (RFC 2544 benchmarking range, as the labs use)
CHARGEN_BLOCK: Final = bytes(range(256)) * 256  # 64 KiB


@dataclass
class FakeStats:
    discarded: dict[int, int] = field(default_factory=dict)  # sock_id -> bytes
    digests: dict[int, str] = field(default_factory=dict)  # sock_id -> sha256 once closed
    closed: list[tuple[int, bool]] = field(default_factory=list)  # (sock_id, abort)
    requests: int = 0


class FakeBackend:
    """`hash_discard=False` skips hashing what port 9 swallows (sha256 would be the bottleneck
    of a throughput benchmark)."""

    def __init__(self, server: SessionServer, *, hash_discard: bool = True) -> None:
        self.server = server
        self.hash_discard = hash_discard
        self.stats = FakeStats()
        self._kind: dict[int, int] = {}  # sock_id -> service port (or 0: loopback)
        self._peer: dict[int, int] = {}  # loopback pairs, both ways
        self._hash: dict[int, hashlib._Hash] = {}
        self._chargen_pos: dict[int, int] = {}
        self._listeners: dict[int, int] = {}  # port -> listener sock_id
        self._listener_port: dict[int, int] = {}
        self._udp: dict[int, int] = {}  # port -> sock_id
        self._udp_port: dict[int, int] = {}
        self._ephemeral = itertools.count(40000)

    # -------------------------------------------------------------------------- streams

    def connect(self, req: ConnectReq) -> None:
        self.stats.requests += 1
        local = (LOCAL_IP, next(self._ephemeral))
        if req.port in (ECHO, DISCARD, CHARGEN):
            self._kind[req.sock_id] = req.port
            if req.port == DISCARD:
                self._hash[req.sock_id] = hashlib.sha256()
                self.stats.discarded[req.sock_id] = 0
            self.server.complete(req, local=local)
            if req.port == CHARGEN:
                self._chargen_pos[req.sock_id] = 0
                self.rx_space(req.sock_id)
        elif req.port == BLACKHOLE:
            pass
        elif req.port in self._listeners:
            other = self.server.incoming(self._listeners[req.port], local)
            if other is None:
                self.server.complete(req, errno.ECONNREFUSED)
                return
            self._kind[req.sock_id] = self._kind[other] = 0
            self._peer[req.sock_id], self._peer[other] = other, req.sock_id
            self.server.complete(req, local=local)
        else:
            self.server.complete(req, errno.ECONNREFUSED)

    def listen(self, req: ListenReq) -> None:
        self.stats.requests += 1
        port = req.port or next(self._ephemeral)
        if port in self._listeners or port in (ECHO, DISCARD, CHARGEN, BLACKHOLE):
            self.server.complete(req, errno.EADDRINUSE)
            return
        self._listeners[port] = req.sock_id
        self._listener_port[req.sock_id] = port
        self.server.complete(req, port=port)

    def send(self, sock_id: int, data: list[memoryview]) -> int:
        kind = self._kind.get(sock_id)
        total = sum(len(v) for v in data)
        if kind == DISCARD:
            if self.hash_discard:
                digest = self._hash[sock_id]
                for view in data:
                    digest.update(view)
            self.stats.discarded[sock_id] += total
            return total
        if kind == ECHO:
            target = sock_id
        elif kind == 0 and sock_id in self._peer:
            target = self._peer[sock_id]
        else:
            return total  # chargen ignores input; unknown sockets drop it
        taken = 0
        for view in data:
            n = self.server.deliver(target, view)
            taken += n
            if n < len(view):
                break
        return taken

    def rx_space(self, sock_id: int) -> None:
        kind = self._kind.get(sock_id)
        if kind == CHARGEN:
            pos = self._chargen_pos[sock_id]
            block = memoryview(CHARGEN_BLOCK)
            while True:
                n = self.server.deliver(sock_id, block[pos:])
                pos = (pos + n) % len(CHARGEN_BLOCK)
                if n == 0:
                    break
            self._chargen_pos[sock_id] = pos
        elif kind == ECHO:
            self.server.tx_kick(sock_id)
        elif kind == 0 and sock_id in self._peer:
            self.server.tx_kick(self._peer[sock_id])

    def shutdown_write(self, sock_id: int) -> None:
        kind = self._kind.get(sock_id)
        if kind in (ECHO, DISCARD):
            self.server.notify(sock_id, Event.PEER_CLOSED)
        elif kind == 0 and sock_id in self._peer:
            self.server.notify(self._peer[sock_id], Event.PEER_CLOSED)

    def close(self, sock_id: int, abort: bool) -> None:
        self.stats.closed.append((sock_id, abort))
        kind = self._kind.pop(sock_id, None)
        if kind == DISCARD:
            self.stats.digests[sock_id] = self._hash.pop(sock_id).hexdigest()
        self._chargen_pos.pop(sock_id, None)
        peer = self._peer.pop(sock_id, None)
        if peer is not None:
            self._peer.pop(peer, None)
            self.server.notify(peer, Event.RESET if abort else Event.PEER_CLOSED)
        port = self._listener_port.pop(sock_id, None)
        if port is not None:
            del self._listeners[port]
        port = self._udp_port.pop(sock_id, None)
        if port is not None:
            del self._udp[port]
        self.server.notify(sock_id, Event.CLOSED)

    # ------------------------------------------------------------------------- datagrams

    def udp_bind(self, req: BindReq) -> None:
        self.stats.requests += 1
        port = req.port or next(self._ephemeral)
        if port in self._udp or port == ECHO:
            self.server.complete(req, errno.EADDRINUSE)
            return
        self._udp[port] = req.sock_id
        self._udp_port[req.sock_id] = port
        self.server.complete(req, port=port)

    def udp_sendto(self, req: SendToReq) -> None:
        self.stats.requests += 1
        src_port = self._udp_port.get(req.sock_id, 0)
        if req.port == ECHO:
            self.server.deliver_datagram(req.sock_id, (req.ip, ECHO), req.payload)
        elif req.port in self._udp:
            self.server.deliver_datagram(self._udp[req.port], (LOCAL_IP, src_port), req.payload)
        self.server.complete(req)

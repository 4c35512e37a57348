"""The session control protocol: small fixed-format messages over a UNIX SOCK_SEQPACKET socket.

Why SEQPACKET rather than a byte stream: it is connection-oriented like a stream (a closed
connection is how the server learns a client died), but keeps message boundaries, so there is
no framing to get wrong and no partial message to buffer; a malformed message is dropped whole,
the next one starts clean. File descriptors (ring regions, doorbells) ride on replies as
SCM_RIGHTS. The server receives with plain `recv`, so fds a client attaches are discarded by the
kernel and cannot fill the server's fd table.

Every message is one 36-byte header (little-endian, `_HEADER`) and a payload:

    op u16 | flags u16 | req_id u32 | sock_id u64 | arg u64 | status i32 | ip u32 | port u16 | 0 u16

`status` is 0 or an errno. Each request (flag `NOREPLY` aside) gets exactly one reply carrying
its `req_id` with flag `REPLY`, possibly after the client sent `CANCEL` for it (then `status` is
ETIMEDOUT unless the result won the race). Replies that open a data channel carry the ring
geometry as payload (`GEOMETRY`) and five fds (see `channel.StackChannel.peer_fds`).
Addresses are IPv4 (the stack is IPv4-only), as a host-order u32 and a port.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .ring import RingGeometry

VERSION: Final = 1
MAGIC: Final = b"stackbed-session"


class Op(IntEnum):
    HELLO = 1  # payload MAGIC; reply: sock_id = session id, arg = VERSION
    CONNECT = 2  # ip, port; reply: sock_id, ip/port = local address, geometry + fds
    LISTEN = 3  # port, arg = backlog; reply: sock_id, port = bound port
    ACCEPT = 4  # sock_id = listener; reply: sock_id = new socket, ip/port = peer, geometry + fds
    CLOSE = 5  # sock_id (any kind); NOREPLY
    SHUTDOWN_WR = 6  # sock_id; reply when queued behind the data already in the TX ring
    UDP_BIND = 7  # port (0 = any); reply: sock_id, port = bound port
    UDP_SENDTO = 8  # sock_id, ip, port, payload = datagram
    UDP_RECVFROM = 9  # sock_id; reply: ip/port = source, payload = datagram
    CANCEL = 10  # arg = req_id of a pending request; NOREPLY (the request itself is answered)


REPLY: Final = 0x1
NOREPLY: Final = 0x2

_HEADER = struct.Struct("<HHIQQiIHH")
HEADER_LEN: Final = _HEADER.size
MAX_DATAGRAM: Final = 65507  # IPv4: 65535 - 20 (IP) - 8 (UDP)
MAX_MESSAGE: Final = HEADER_LEN + MAX_DATAGRAM
GEOMETRY = struct.Struct("<IIII")  # tx slots, tx slot size, rx slots, rx slot size


class ProtocolError(ValueError):
    """A message that does not parse: the peer is broken or hostile."""


@dataclass(frozen=True, slots=True)
class Message:
    op: int
    flags: int = 0
    req_id: int = 0
    sock_id: int = 0
    arg: int = 0
    status: int = 0
    ip: int = 0
    port: int = 0
    payload: bytes = b""

    def encode(self) -> bytes:
        header = _HEADER.pack(
            self.op,
            self.flags,
            self.req_id,
            self.sock_id,
            self.arg,
            self.status,
            self.ip,
            self.port,
            0,
        )
        return header + self.payload if self.payload else header

    @classmethod
    def decode(cls, data: bytes) -> Message:
        if len(data) < HEADER_LEN:
            raise ProtocolError(f"message of {len(data)} bytes is shorter than a header")
        if len(data) > MAX_MESSAGE:
            raise ProtocolError(f"message of {len(data)} bytes is too long")
        op, flags, req_id, sock_id, arg, status, ip, port, _ = _HEADER.unpack_from(data)
        return cls(op, flags, req_id, sock_id, arg, status, ip, port, bytes(data[HEADER_LEN:]))

    def reply(self, **fields: object) -> Message:
        """The reply to this request: same op and req_id, flag REPLY, `fields` set."""
        base: dict[str, object] = {"op": self.op, "flags": REPLY, "req_id": self.req_id}
        base.update(fields)
        return Message(**base)  # type: ignore[arg-type]


def pack_geometry(tx: RingGeometry, rx: RingGeometry) -> bytes:
    return GEOMETRY.pack(tx.slots, tx.slot_size, rx.slots, rx.slot_size)


def unpack_geometry(payload: bytes) -> tuple[RingGeometry, RingGeometry]:
    if len(payload) != GEOMETRY.size:
        raise ProtocolError("bad geometry payload")
    tx_slots, tx_size, rx_slots, rx_size = GEOMETRY.unpack(payload)
    try:
        return RingGeometry(tx_slots, tx_size), RingGeometry(rx_slots, rx_size)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc


def ip_to_int(host: str) -> int:
    """Dotted quad -> host-order u32 ('localhost' is not resolved: the stack has no DNS)."""
    try:
        return int(ipaddress.IPv4Address(host))
    except ValueError as exc:
        raise OSError(f"not an IPv4 address: {host!r}") from exc


def int_to_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def unix_address(path: str | bytes) -> str | bytes:
    """A socket path for bind/connect: '@name' (or a leading NUL) is a Linux abstract name,
    which needs no directory, leaves no file behind and vanishes with its last socket."""
    if isinstance(path, str) and path.startswith("@"):
        return "\0" + path[1:]
    return path


def is_abstract(path: str | bytes) -> bool:
    first = path[:1]
    return first in ("@", "\0", b"\0")

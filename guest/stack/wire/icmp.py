"""ICMPv4 codec (RFC 792): echo request/reply, and the error messages a stack must survive.

Decoded types: echo reply (0), destination unreachable (3), echo request (8), time exceeded
(11). For the two error types the quoted datagram (the offending IPv4 header plus at least 8
bytes of its payload) is validated and decoded into `QuotedDatagram`, which is what a stack
needs to find the socket to notify (addresses, protocol, ports). Other types are well-formed
ICMP this layer does not decode: `WireError("unsupported")`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._buf import BytesLike, as_view
from .checksum import checksum, ones_sum
from .errors import (
    BAD_CHECKSUM,
    BAD_FIELD,
    BAD_LENGTH,
    BAD_VERSION,
    NO_ROOM,
    TRUNCATED,
    UNSUPPORTED,
    WireError,
)
from .ipv4 import MIN_HEADER_LEN, Ipv4Repr

HEADER_LEN: Final = 8

TYPE_ECHO_REPLY: Final = 0
TYPE_DST_UNREACHABLE: Final = 3
TYPE_ECHO_REQUEST: Final = 8
TYPE_TIME_EXCEEDED: Final = 11

# Destination-unreachable codes (RFC 792, RFC 1122, RFC 1812).
UNREACH_NET: Final = 0
UNREACH_HOST: Final = 1
UNREACH_PROTOCOL: Final = 2
UNREACH_PORT: Final = 3
UNREACH_FRAG_NEEDED: Final = 4  # carries the next-hop MTU (RFC 1191)
UNREACH_ADMIN_PROHIBITED: Final = 13

#: Quote at most this much of an offending datagram so that the error fits in 576 bytes
#: (RFC 1812 4.3.2.3): 576 - 20 (IPv4) - 8 (ICMP).
MAX_QUOTE_LEN: Final = 548
#: RFC 792: the quote holds the offending header and the first 64 bits of its payload.
MIN_QUOTED_PAYLOAD: Final = 8

_ERROR_TYPES: Final = frozenset({TYPE_DST_UNREACHABLE, TYPE_TIME_EXCEEDED})
_ECHO_TYPES: Final = frozenset({TYPE_ECHO_REPLY, TYPE_ECHO_REQUEST})

# type, code, checksum, ident, seq_no  (for errors: unused/next-hop MTU in the last 4 bytes)
_HEADER = struct.Struct("!BBHHH")
_U16 = struct.Struct("!H")
_QUOTED_IP = struct.Struct("!BBHHHBBHII")


class Icmpv4Packet:
    """Zero-copy view of an ICMPv4 message (unchecked on construction; see `new_checked`)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: BytesLike) -> None:
        self.buffer = as_view(buffer)

    @classmethod
    def new_checked(cls, buffer: BytesLike) -> Icmpv4Packet:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """ "truncated" unless the 8-byte header is present."""
        if len(self.buffer) < HEADER_LEN:
            raise WireError(TRUNCATED, f"icmp message of {len(self.buffer)} bytes")

    @property
    def msg_type(self) -> int:
        return self.buffer[0]

    @property
    def code(self) -> int:
        return self.buffer[1]

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @property
    def ident(self) -> int:
        """Echo identifier (meaningful for echo messages only)."""
        return _U16.unpack_from(self.buffer, 4)[0]

    @property
    def seq_no(self) -> int:
        """Echo sequence number (meaningful for echo messages only)."""
        return _U16.unpack_from(self.buffer, 6)[0]

    @property
    def next_hop_mtu(self) -> int:
        """Next-hop MTU of a "fragmentation needed" unreachable (RFC 1191), else unused."""
        return _U16.unpack_from(self.buffer, 6)[0]

    @property
    def data(self) -> memoryview:
        """Everything after the 8-byte header (zero-copy)."""
        return self.buffer[HEADER_LEN:]

    def verify_checksum(self) -> bool:
        return ones_sum(self.buffer) == 0xFFFF

    def fill_checksum(self) -> None:
        self.buffer[2:4] = b"\x00\x00"
        _U16.pack_into(self.buffer, 2, checksum(self.buffer))


@dataclass(slots=True)
class QuotedDatagram:
    """The offending datagram quoted in an ICMP error: its header and leading payload bytes.

    `header.payload_len` is what the original header claimed, not what was quoted; `payload`
    holds the quoted bytes (at least 8, so the TCP/UDP ports are always present).
    """

    header: Ipv4Repr
    payload: bytes | memoryview

    @property
    def ports(self) -> tuple[int, int]:
        """(src_port, dst_port) of a quoted TCP or UDP header: the first two 16-bit words."""
        src_port, dst_port = struct.unpack_from("!HH", self.payload, 0)
        return src_port, dst_port

    @classmethod
    def parse(cls, quote: memoryview) -> QuotedDatagram:
        """Decode leniently: the quoted datagram is truncated by design, so Total Length is not
        checked against the quote, and its checksum is not verified."""
        n = len(quote)
        if n < MIN_HEADER_LEN:
            raise WireError(TRUNCATED, f"icmp quote of {n} bytes")
        ver_ihl, tos, total, ident, ff, ttl, proto, _, src, dst = _QUOTED_IP.unpack_from(quote)
        if ver_ihl >> 4 != 4:
            raise WireError(BAD_VERSION, f"icmp quote ip version {ver_ihl >> 4}")
        header_len = (ver_ihl & 0x0F) * 4
        if header_len < MIN_HEADER_LEN or total < header_len:
            raise WireError(BAD_LENGTH, f"icmp quote ihl={header_len} total={total}")
        if n < header_len + MIN_QUOTED_PAYLOAD:
            raise WireError(TRUNCATED, f"icmp quote of {n} bytes, header {header_len}")
        header = Ipv4Repr(
            src,
            dst,
            proto,
            total - header_len,
            ttl,
            ident,
            bool(ff & 0x4000),
            bool(ff & 0x2000),
            (ff & 0x1FFF) * 8,
            tos >> 2,
            tos & 3,
        )
        return cls(header, quote[header_len:])


@dataclass(slots=True)
class Icmpv4Repr:
    """High-level ICMPv4 message.

    Echo messages use `ident`, `seq_no` and `data` (the echo payload). Error messages use
    `data` for the raw quoted datagram (what goes on the wire) and expose it decoded as
    `quoted` after parsing; `next_hop_mtu` is only meaningful for "fragmentation needed".
    Unused fields stay 0 so that emit/parse round trips compare equal.
    """

    msg_type: int
    code: int = 0
    ident: int = 0
    seq_no: int = 0
    data: bytes | memoryview = b""
    next_hop_mtu: int = 0
    quoted: QuotedDatagram | None = None

    @classmethod
    def dst_unreachable(cls, code: int, datagram: BytesLike, next_hop_mtu: int = 0) -> Icmpv4Repr:
        """Build an unreachable quoting the offending `datagram` (its header and payload start),
        truncated to `MAX_QUOTE_LEN`. Raises `WireError` if `datagram` cannot be quoted.

        The quote is a view of `datagram`, not a copy: emit before reusing that buffer.
        """
        quote = as_view(datagram)[:MAX_QUOTE_LEN]
        return cls(
            TYPE_DST_UNREACHABLE,
            code,
            data=quote,
            next_hop_mtu=next_hop_mtu if code == UNREACH_FRAG_NEEDED else 0,
            quoted=QuotedDatagram.parse(quote),
        )

    @classmethod
    def parse(cls, packet: Icmpv4Packet | BytesLike, verify_checksum: bool = True) -> Icmpv4Repr:
        """Validate and decode the whole message (the IPv4 payload).

        Raises `WireError` ("truncated", "bad-checksum", "unsupported" for other types, or a
        quote error for malformed error messages).
        """
        buf = packet.buffer if isinstance(packet, Icmpv4Packet) else as_view(packet)
        if len(buf) < HEADER_LEN:
            raise WireError(TRUNCATED, f"icmp message of {len(buf)} bytes")
        if verify_checksum and ones_sum(buf) != 0xFFFF:
            raise WireError(BAD_CHECKSUM, "icmp")
        msg_type, code, _, word1, word2 = _HEADER.unpack_from(buf, 0)
        data = buf[HEADER_LEN:]
        if msg_type in _ECHO_TYPES:
            return cls(msg_type, code, word1, word2, data)
        if msg_type in _ERROR_TYPES:
            mtu = word2 if msg_type == TYPE_DST_UNREACHABLE and code == UNREACH_FRAG_NEEDED else 0
            return cls(
                msg_type, code, data=data, next_hop_mtu=mtu, quoted=QuotedDatagram.parse(data)
            )
        raise WireError(UNSUPPORTED, f"icmp type {msg_type}")

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.data)

    def emit(
        self, buf: bytearray | memoryview, offset: int = 0, compute_checksum: bool = True
    ) -> int:
        """Write the message (header and data) at `buf[offset:]`; returns bytes written."""
        end = offset + HEADER_LEN + len(self.data)
        if offset < 0 or len(buf) < end:
            raise WireError(NO_ROOM, "icmp message")
        if self.msg_type in _ECHO_TYPES:
            word1, word2 = self.ident, self.seq_no
        elif self.msg_type == TYPE_DST_UNREACHABLE and self.code == UNREACH_FRAG_NEEDED:
            word1, word2 = 0, self.next_hop_mtu
        else:
            word1 = word2 = 0  # "unused", must be zero (RFC 792)
        try:
            _HEADER.pack_into(buf, offset, self.msg_type, self.code, 0, word1, word2)
        except struct.error as exc:
            raise WireError(BAD_FIELD, str(exc)) from exc
        buf[offset + HEADER_LEN : end] = self.data
        if compute_checksum:
            _U16.pack_into(buf, offset + 2, checksum(memoryview(buf)[offset:end]))
        return end - offset

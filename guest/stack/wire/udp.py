"""UDP codec (RFC 768) with the IPv4 pseudo-header checksum.

A received checksum of zero means "not computed" and is accepted unverified; a computed checksum
of zero is transmitted as 0xFFFF (its one's-complement twin), as RFC 768 requires. The payload
is bounded by the UDP Length field (which may be shorter than the IP payload).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._buf import BytesLike, as_view
from .checksum import fold, pseudo_header_sum, raw_sum
from .errors import BAD_CHECKSUM, BAD_FIELD, BAD_LENGTH, NO_ROOM, TRUNCATED, WireError
from .ipv4 import PROTO_UDP

HEADER_LEN: Final = 8

_HEADER = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")


class UdpPacket:
    """Zero-copy view of a UDP datagram (unchecked on construction; see `new_checked`)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: BytesLike) -> None:
        self.buffer = as_view(buffer)

    @classmethod
    def new_checked(cls, buffer: BytesLike) -> UdpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """ "truncated" if shorter than 8 bytes or than Length; "bad-length" if Length < 8."""
        _check_len(self.buffer)

    @property
    def src_port(self) -> int:
        return _U16.unpack_from(self.buffer, 0)[0]

    @property
    def dst_port(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @property
    def length(self) -> int:
        return _U16.unpack_from(self.buffer, 4)[0]

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 6)[0]

    @property
    def payload(self) -> memoryview:
        return self.buffer[HEADER_LEN : self.length]

    def verify_checksum(self, src_ip: int, dst_ip: int) -> bool:
        """True if the checksum is absent (zero) or verifies over pseudo-header + datagram."""
        if self.checksum == 0:
            return True
        return _sum(self.buffer[: self.length], src_ip, dst_ip) == 0xFFFF


def _check_len(buf: memoryview) -> int:
    n = len(buf)
    if n < HEADER_LEN:
        raise WireError(TRUNCATED, f"udp datagram of {n} bytes")
    length = _U16.unpack_from(buf, 4)[0]
    if length < HEADER_LEN:
        raise WireError(BAD_LENGTH, f"udp length {length}")
    if n < length:
        raise WireError(TRUNCATED, f"udp length {length} in {n} bytes")
    return length


def _sum(datagram: memoryview, src_addr: int, dst_addr: int) -> int:
    """Folded one's-complement sum of pseudo-header + datagram."""
    n = len(datagram)
    return fold(raw_sum(datagram) + pseudo_header_sum(src_addr, dst_addr, PROTO_UDP, n))


@dataclass(slots=True)
class UdpRepr:
    """High-level UDP datagram; `payload` is a zero-copy view when parsed."""

    src_port: int
    dst_port: int
    payload: bytes | memoryview = b""

    @classmethod
    def parse(
        cls,
        packet: UdpPacket | BytesLike,
        src_ip: int,
        dst_ip: int,
        verify_checksum: bool = True,
    ) -> UdpRepr:
        """Validate and decode; raises `WireError` ("truncated", "bad-length", "bad-checksum")."""
        buf = packet.buffer if isinstance(packet, UdpPacket) else as_view(packet)
        length = _check_len(buf)
        src_port, dst_port, _, csum = _HEADER.unpack_from(buf, 0)
        if verify_checksum and csum != 0 and _sum(buf[:length], src_ip, dst_ip) != 0xFFFF:
            raise WireError(BAD_CHECKSUM, "udp")
        return cls(src_port, dst_port, buf[HEADER_LEN:length])

    def header_len(self) -> int:
        return HEADER_LEN

    def buffer_len(self) -> int:
        """Header plus payload: the UDP Length field."""
        return HEADER_LEN + len(self.payload)

    def emit(
        self,
        buf: bytearray | memoryview,
        offset: int,
        src_ip: int,
        dst_ip: int,
        compute_checksum: bool = True,
    ) -> int:
        """Write header and payload at `buf[offset:]`; returns bytes written.

        `compute_checksum=False` writes checksum 0 ("none"), legal for UDP over IPv4.
        """
        payload_len = len(self.payload)
        end = offset + HEADER_LEN + payload_len
        if offset < 0 or len(buf) < end:
            raise WireError(NO_ROOM, "udp datagram")
        buf[offset + HEADER_LEN : end] = self.payload
        self.emit_header(buf, offset, src_ip, dst_ip, payload_len, compute_checksum)
        return HEADER_LEN + payload_len

    def emit_header(
        self,
        buf: bytearray | memoryview,
        offset: int,
        src_ip: int,
        dst_ip: int,
        payload_len: int,
        compute_checksum: bool = True,
    ) -> int:
        """Write only the header, for `payload_len` bytes already in place behind it.

        `self.payload` is ignored; the checksum covers what is in `buf`. Returns 8.
        """
        length = HEADER_LEN + payload_len
        end = offset + length
        if offset < 0 or len(buf) < end:
            raise WireError(NO_ROOM, "udp datagram")
        if length > 0xFFFF:
            raise WireError(BAD_FIELD, f"udp length {length}")
        try:
            _HEADER.pack_into(buf, offset, self.src_port, self.dst_port, length, 0)
        except struct.error as exc:
            raise WireError(BAD_FIELD, str(exc)) from exc
        if compute_checksum:
            csum = ~_sum(memoryview(buf)[offset:end], src_ip, dst_ip) & 0xFFFF
            _U16.pack_into(buf, offset + 6, csum or 0xFFFF)
        return HEADER_LEN

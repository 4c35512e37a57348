"""IPv4 header codec (RFC 791).

Options are never interpreted: the header length (IHL) is validated and used to skip them, and
`Ipv4Packet.options` exposes their raw bytes. The payload is bounded by the Total Length field,
not the buffer, because Ethernet pads short frames; a buffer shorter than Total Length is
"truncated". Fragment fields are exposed as decoded values (offset in bytes); reassembly lives
in `ipv4_frag.py`. Addresses are ints (see `addr.py`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._buf import BytesLike, as_view
from .checksum import checksum, ones_sum
from .errors import BAD_CHECKSUM, BAD_FIELD, BAD_LENGTH, BAD_VERSION, NO_ROOM, TRUNCATED, WireError

MIN_HEADER_LEN: Final = 20
MAX_PACKET_LEN: Final = 0xFFFF

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

FLAG_DF: Final = 0x4000
FLAG_MF: Final = 0x2000
FRAG_OFFSET_MASK: Final = 0x1FFF

# ver_ihl, tos, total_len, ident, flags_frag, ttl, proto, checksum, src, dst
_HEADER = struct.Struct("!BBHHHBBHII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class Ipv4Packet:
    """Zero-copy view of an IPv4 packet; fields are read lazily with `struct`.

    The constructor does not validate, so it can wrap a fresh buffer being built; for received
    bytes use `new_checked()` (or `Ipv4Repr.parse`) before reading fields or `payload`.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: BytesLike) -> None:
        self.buffer = as_view(buffer)

    @classmethod
    def new_checked(cls, buffer: BytesLike) -> Ipv4Packet:
        """View `buffer` after `check_len()`."""
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """Validate the lengths every accessor relies on, in dependency order.

        Raises `WireError`: "truncated" if the buffer is shorter than 20 bytes, the IHL header or
        the Total Length; "bad-length" if IHL < 5 or Total Length < header length.
        """
        _check_len(self.buffer)

    # -- fields -------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.buffer[0] >> 4

    @property
    def header_len(self) -> int:
        """Header length in bytes (IHL * 4), options included."""
        return (self.buffer[0] & 0x0F) * 4

    @property
    def dscp(self) -> int:
        return self.buffer[1] >> 2

    @property
    def ecn(self) -> int:
        return self.buffer[1] & 0x03

    @property
    def total_len(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @total_len.setter
    def total_len(self, value: int) -> None:
        _U16.pack_into(self.buffer, 2, value)

    @property
    def ident(self) -> int:
        return _U16.unpack_from(self.buffer, 4)[0]

    @property
    def dont_frag(self) -> bool:
        return bool(_U16.unpack_from(self.buffer, 6)[0] & FLAG_DF)

    @property
    def more_frags(self) -> bool:
        return bool(_U16.unpack_from(self.buffer, 6)[0] & FLAG_MF)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes (the field counts 8-byte units)."""
        return (_U16.unpack_from(self.buffer, 6)[0] & FRAG_OFFSET_MASK) * 8

    @property
    def ttl(self) -> int:
        return self.buffer[8]

    @ttl.setter
    def ttl(self, value: int) -> None:
        self.buffer[8] = value

    @property
    def protocol(self) -> int:
        return self.buffer[9]

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 10)[0]

    @checksum.setter
    def checksum(self, value: int) -> None:
        _U16.pack_into(self.buffer, 10, value)

    @property
    def src_addr(self) -> int:
        return _U32.unpack_from(self.buffer, 12)[0]

    @src_addr.setter
    def src_addr(self, value: int) -> None:
        _U32.pack_into(self.buffer, 12, value)

    @property
    def dst_addr(self) -> int:
        return _U32.unpack_from(self.buffer, 16)[0]

    @dst_addr.setter
    def dst_addr(self, value: int) -> None:
        _U32.pack_into(self.buffer, 16, value)

    @property
    def options(self) -> memoryview:
        """Raw option bytes (zero-copy), never interpreted by this stack."""
        return self.buffer[MIN_HEADER_LEN : self.header_len]

    @property
    def payload(self) -> memoryview:
        """Bytes after the header up to Total Length (zero-copy; excludes link padding)."""
        return self.buffer[self.header_len : self.total_len]

    # -- checksum -----------------------------------------------------------------------------

    def verify_checksum(self) -> bool:
        """True if the header (options included) sums to 0xFFFF."""
        return ones_sum(self.buffer[: self.header_len]) == 0xFFFF

    def fill_checksum(self) -> None:
        """Compute and store the header checksum (call after the last header change)."""
        self.buffer[10:12] = b"\x00\x00"
        _U16.pack_into(self.buffer, 10, checksum(self.buffer[: self.header_len]))


def _check_len(buf: memoryview) -> tuple[int, int]:
    """Shared by `Ipv4Packet.check_len` and `Ipv4Repr.parse`; returns (header_len, total_len)."""
    n = len(buf)
    if n < MIN_HEADER_LEN:
        raise WireError(TRUNCATED, f"ipv4 packet of {n} bytes")
    header_len = (buf[0] & 0x0F) * 4
    if header_len < MIN_HEADER_LEN:
        raise WireError(BAD_LENGTH, f"ipv4 IHL of {header_len} bytes")
    if n < header_len:
        raise WireError(TRUNCATED, f"ipv4 header of {header_len} bytes in {n}")
    total_len = _U16.unpack_from(buf, 2)[0]
    if total_len < header_len:
        raise WireError(BAD_LENGTH, f"ipv4 total length {total_len} < header {header_len}")
    if n < total_len:
        raise WireError(TRUNCATED, f"ipv4 total length {total_len} in {n} bytes")
    return header_len, total_len


@dataclass(slots=True)
class Ipv4Repr:
    """High-level IPv4 header: what the stack needs, options dropped.

    `payload_len` is Total Length minus the header length; `frag_offset` is in bytes (a multiple
    of 8). `emit()` always writes a 20-byte header without options.
    """

    src_addr: int
    dst_addr: int
    protocol: int
    payload_len: int
    ttl: int = 64
    ident: int = 0
    dont_frag: bool = False
    more_frags: bool = False
    frag_offset: int = 0
    dscp: int = 0
    ecn: int = 0

    @property
    def is_fragment(self) -> bool:
        """True for any piece of a fragmented datagram (it must go through reassembly)."""
        return self.more_frags or self.frag_offset != 0

    @classmethod
    def parse(cls, packet: Ipv4Packet | BytesLike, verify_checksum: bool = True) -> Ipv4Repr:
        """Validate and decode a header.

        Raises `WireError` ("truncated", "bad-length", "bad-version", "bad-checksum"). After it
        returns, `Ipv4Packet(buf).payload` is safe to read.
        """
        buf = packet.buffer if isinstance(packet, Ipv4Packet) else as_view(packet)
        header_len, total_len = _check_len(buf)
        ver_ihl, tos, _, ident, flags_frag, ttl, proto, _, src, dst = _HEADER.unpack_from(buf, 0)
        if ver_ihl >> 4 != 4:
            raise WireError(BAD_VERSION, f"ip version {ver_ihl >> 4}")
        if verify_checksum and ones_sum(buf[:header_len]) != 0xFFFF:
            raise WireError(BAD_CHECKSUM, "ipv4 header")
        return cls(
            src,
            dst,
            proto,
            total_len - header_len,
            ttl,
            ident,
            bool(flags_frag & FLAG_DF),
            bool(flags_frag & FLAG_MF),
            (flags_frag & FRAG_OFFSET_MASK) * 8,
            tos >> 2,
            tos & 0x03,
        )

    def header_len(self) -> int:
        """Bytes `emit()` writes (no options are ever emitted)."""
        return MIN_HEADER_LEN

    def buffer_len(self) -> int:
        """Header plus payload: the Total Length field."""
        return MIN_HEADER_LEN + self.payload_len

    def emit(
        self, buf: bytearray | memoryview, offset: int = 0, compute_checksum: bool = True
    ) -> int:
        """Write the 20-byte header at `buf[offset:]`; returns bytes written.

        The payload is not touched: upper layers write theirs in place behind the header.
        """
        if offset < 0 or len(buf) - offset < MIN_HEADER_LEN:
            raise WireError(NO_ROOM, "ipv4 header")
        total_len = MIN_HEADER_LEN + self.payload_len
        if (
            total_len > MAX_PACKET_LEN
            or self.frag_offset & 7
            or not 0 <= self.frag_offset >> 3 <= FRAG_OFFSET_MASK
            or not 0 <= self.dscp <= 0x3F
            or not 0 <= self.ecn <= 3
        ):
            raise WireError(BAD_FIELD, f"ipv4 header fields out of range: {self}")
        flags_frag = (
            (FLAG_DF if self.dont_frag else 0)
            | (FLAG_MF if self.more_frags else 0)
            | (self.frag_offset >> 3)
        )
        try:
            _HEADER.pack_into(
                buf,
                offset,
                0x45,
                (self.dscp << 2) | self.ecn,
                total_len,
                self.ident,
                flags_frag,
                self.ttl,
                self.protocol,
                0,
                self.src_addr,
                self.dst_addr,
            )
        except struct.error as exc:
            raise WireError(BAD_FIELD, str(exc)) from exc
        if compute_checksum:
            view = memoryview(buf)[offset : offset + MIN_HEADER_LEN]
            _U16.pack_into(buf, offset + 10, checksum(view))
        return MIN_HEADER_LEN

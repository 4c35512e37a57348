"""TCP on the wire: the high-level representation shared by the codec and the protocol logic.

`TcpRepr` is what the sans-I/O TCP state machine consumes and produces; the codec in this module
turns it into bytes and back. Keeping the representation here (as smoltcp's `TcpRepr` lives in
`wire/tcp.rs`) lets the protocol code stay ignorant of byte layouts.

Codec rules:
* Options decoded: EOL (0), NOP (1), MSS (2), window scale (3), SACK-permitted (4), SACK (5),
  timestamps (8). Unknown kinds are skipped by their length byte; a length that is < 2, runs
  past the header, or is wrong for a known kind is `WireError("bad-option")`: a peer that sends
  a malformed option cannot be trusted to have meant anything by the segment.
* A window-scale shift above 14 is clamped to 14, as RFC 7323 2.3 requires of the receiver.
* Parsed `payload` is a `memoryview` slice of the input: no byte is copied on receive.
* Emitted options use Linux's 4-byte-aligned layout (MSS; NOP+WS; SACK-permitted fused with
  the timestamp option or NOP-padded; NOP NOP + SACK), so no trailing padding is needed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag
from typing import Final

from ._buf import BytesLike, as_view
from .checksum import fold, pseudo_header_sum, raw_sum
from .errors import BAD_CHECKSUM, BAD_FIELD, BAD_LENGTH, BAD_OPTION, NO_ROOM, TRUNCATED, WireError

MIN_HEADER_LEN: Final = 20
MAX_HEADER_LEN: Final = 60
PROTO_TCP: Final = 6

OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WINDOW_SCALE: Final = 3
OPT_SACK_PERMITTED: Final = 4
OPT_SACK: Final = 5
OPT_TIMESTAMP: Final = 8
MAX_WINDOW_SCALE: Final = 14
MAX_SACK_BLOCKS: Final = 4

# src_port, dst_port, seq, ack, offset_flags, window, checksum, urgent
_HEADER = struct.Struct("!HHIIHHHH")
_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")
_U32_PAIR = struct.Struct("!II")


class TcpFlags(IntFlag):
    """The TCP control bits (RFC 9293 section 3.1, plus ECE/CWR from RFC 3168)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


# Building an IntFlag from an int costs ~0.23 us; indexing a prebuilt table ~0.03 us.
_FLAGS: Final = tuple(TcpFlags(i) for i in range(256))


class TcpPacket:
    """Zero-copy view of a TCP segment; fields read lazily with `struct`.

    Unchecked on construction (so it can wrap a buffer being built); use `new_checked()` or
    `TcpRepr.parse` on received bytes. The view must span exactly the segment (the IPv4
    payload): the payload and the checksum run to its end.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: BytesLike) -> None:
        self.buffer = as_view(buffer)

    @classmethod
    def new_checked(cls, buffer: BytesLike) -> TcpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """ "truncated" if shorter than 20 bytes or the data offset; "bad-length" if the data
        offset is below 5 words."""
        _check_len(self.buffer)

    @property
    def src_port(self) -> int:
        return _U16.unpack_from(self.buffer, 0)[0]

    @property
    def dst_port(self) -> int:
        return _U16.unpack_from(self.buffer, 2)[0]

    @property
    def seq_number(self) -> int:
        return struct.unpack_from("!I", self.buffer, 4)[0]

    @property
    def ack_number(self) -> int:
        return struct.unpack_from("!I", self.buffer, 8)[0]

    @property
    def header_len(self) -> int:
        """Data offset in bytes, options included."""
        return (self.buffer[12] >> 4) * 4

    @property
    def flags(self) -> TcpFlags:
        return _FLAGS[self.buffer[13]]

    @property
    def window_len(self) -> int:
        return _U16.unpack_from(self.buffer, 14)[0]

    @property
    def checksum(self) -> int:
        return _U16.unpack_from(self.buffer, 16)[0]

    @property
    def urgent_at(self) -> int:
        return _U16.unpack_from(self.buffer, 18)[0]

    @property
    def options(self) -> memoryview:
        return self.buffer[MIN_HEADER_LEN : self.header_len]

    @property
    def payload(self) -> memoryview:
        return self.buffer[self.header_len :]

    def verify_checksum(self, src_ip: int, dst_ip: int) -> bool:
        return _sum(self.buffer, src_ip, dst_ip) == 0xFFFF

    def fill_checksum(self, src_ip: int, dst_ip: int) -> None:
        self.buffer[16:18] = b"\x00\x00"
        _U16.pack_into(self.buffer, 16, ~_sum(self.buffer, src_ip, dst_ip) & 0xFFFF)


def _check_len(buf: memoryview) -> int:
    n = len(buf)
    if n < MIN_HEADER_LEN:
        raise WireError(TRUNCATED, f"tcp segment of {n} bytes")
    header_len = (buf[12] >> 4) * 4
    if header_len < MIN_HEADER_LEN:
        raise WireError(BAD_LENGTH, f"tcp data offset of {header_len} bytes")
    if n < header_len:
        raise WireError(TRUNCATED, f"tcp header of {header_len} bytes in {n}")
    return header_len


def _sum(segment: memoryview, src_ip: int, dst_ip: int) -> int:
    """Folded one's-complement sum of the pseudo-header and the whole segment."""
    n = len(segment)
    return fold(raw_sum(segment) + pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, n))


def _parse_options(
    opts: memoryview,
) -> tuple[int | None, int | None, bool, tuple[tuple[int, int], ...], tuple[int, int] | None]:
    """Decode the option bytes; returns (mss, window_scale, sack_permitted, sack, timestamp)."""
    mss = window_scale = timestamp = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    i = 0
    n = len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_NOP:
            i += 1
            continue
        if kind == OPT_EOL:
            break
        if i + 1 >= n:
            raise WireError(BAD_OPTION, f"tcp option {kind} without length")
        length = opts[i + 1]
        if length < 2 or i + length > n:
            raise WireError(BAD_OPTION, f"tcp option {kind} length {length}")
        if kind == OPT_TIMESTAMP:
            if length != 10:
                raise WireError(BAD_OPTION, f"tcp timestamp length {length}")
            timestamp = _U32_PAIR.unpack_from(opts, i + 2)
        elif kind == OPT_SACK:
            if length < 10 or (length - 2) & 7:
                raise WireError(BAD_OPTION, f"tcp sack length {length}")
            edges = struct.unpack_from(f"!{(length - 2) >> 2}I", opts, i + 2)
            sack_blocks = tuple(zip(edges[0::2], edges[1::2], strict=True))
        elif kind == OPT_MSS:
            if length != 4:
                raise WireError(BAD_OPTION, f"tcp mss length {length}")
            mss = _U16.unpack_from(opts, i + 2)[0]
        elif kind == OPT_WINDOW_SCALE:
            if length != 3:
                raise WireError(BAD_OPTION, f"tcp window scale length {length}")
            window_scale = min(opts[i + 2], MAX_WINDOW_SCALE)
        elif kind == OPT_SACK_PERMITTED:
            if length != 2:
                raise WireError(BAD_OPTION, f"tcp sack-permitted length {length}")
            sack_permitted = True
        i += length
    return mss, window_scale, sack_permitted, sack_blocks, timestamp


@dataclass(slots=True)
class TcpRepr:
    """One TCP segment as the protocol logic sees it.

    `window` is the raw 16-bit field (unscaled): scaling is connection state, not wire state.
    `payload` is a view into the received frame where possible, so that no layer copies data.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int
    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None  # (TSval, TSecr)
    payload: bytes | memoryview = b""
    urgent: int = 0

    def segment_len(self) -> int:
        """Sequence space the segment occupies: payload plus one for each of SYN and FIN."""
        n = len(self.payload)
        if self.flags & TcpFlags.SYN:
            n += 1
        if self.flags & TcpFlags.FIN:
            n += 1
        return n

    # -- codec --------------------------------------------------------------------------------

    @classmethod
    def parse(
        cls,
        packet: TcpPacket | BytesLike,
        src_ip: int,
        dst_ip: int,
        verify_checksum: bool = True,
    ) -> TcpRepr:
        """Validate and decode a segment (the whole IPv4 payload).

        `src_ip`/`dst_ip` feed the pseudo-header. Raises `WireError` ("truncated",
        "bad-length", "bad-checksum", "bad-option"). The returned `payload` is a zero-copy
        `memoryview` slice of `packet`.
        """
        buf = packet.buffer if isinstance(packet, TcpPacket) else as_view(packet)
        header_len = _check_len(buf)
        if verify_checksum and _sum(buf, src_ip, dst_ip) != 0xFFFF:
            raise WireError(BAD_CHECKSUM, "tcp")
        src_port, dst_port, seq, ack, offset_flags, window, _, urgent = _HEADER.unpack_from(buf)
        flags = _FLAGS[offset_flags & 0xFF]
        if header_len == MIN_HEADER_LEN:
            return cls(
                src_port,
                dst_port,
                seq,
                ack,
                flags,
                window,
                payload=buf[MIN_HEADER_LEN:],
                urgent=urgent,
            )
        mss, ws, sack_permitted, sack_blocks, timestamp = _parse_options(
            buf[MIN_HEADER_LEN:header_len]
        )
        return cls(
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            window,
            mss,
            ws,
            sack_permitted,
            sack_blocks,
            timestamp,
            buf[header_len:],
            urgent,
        )

    def _options_len(self) -> int:
        n = 0
        if self.mss is not None:
            n += 4
        if self.window_scale is not None:
            n += 4
        if self.timestamp is not None:
            n += 12  # SACK-permitted, if any, replaces the two leading NOPs
        elif self.sack_permitted:
            n += 4
        if self.sack_blocks:
            n += 4 + 8 * len(self.sack_blocks)
        return n

    def header_len(self) -> int:
        """Bytes of header `emit()` writes, options included (a multiple of 4, at most 60)."""
        n = MIN_HEADER_LEN + self._options_len()
        if n > MAX_HEADER_LEN:
            raise WireError(BAD_OPTION, f"tcp options need {n - MIN_HEADER_LEN} > 40 bytes")
        return n

    def buffer_len(self) -> int:
        """Header plus payload."""
        return self.header_len() + len(self.payload)

    def emit(
        self,
        buf: bytearray | memoryview,
        offset: int,
        src_ip: int,
        dst_ip: int,
        compute_checksum: bool = True,
    ) -> int:
        """Write header and payload at `buf[offset:]`; returns bytes written.

        The payload is copied once into place (a self-copy, harmless, if `self.payload` already
        views that very spot). To checksum a payload written in place beforehand without
        touching it, use `emit_header()`.
        """
        header_len = self.header_len()
        payload_len = len(self.payload)
        end = offset + header_len + payload_len
        if offset < 0 or len(buf) < end:
            raise WireError(NO_ROOM, "tcp segment")
        buf[offset + header_len : end] = self.payload
        self._emit_header(buf, offset, header_len, end, src_ip, dst_ip, compute_checksum)
        return header_len + payload_len

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

        `self.payload` is ignored: the checksum covers the bytes in `buf`. Returns the header
        length. This is what lets a frame be built with the payload placed first and the
        headers written in front of it, with no copy and no concatenation.
        """
        header_len = self.header_len()
        end = offset + header_len + payload_len
        if offset < 0 or payload_len < 0 or len(buf) < end:
            raise WireError(NO_ROOM, "tcp segment")
        self._emit_header(buf, offset, header_len, end, src_ip, dst_ip, compute_checksum)
        return header_len

    def _emit_header(
        self,
        buf: bytearray | memoryview,
        offset: int,
        header_len: int,
        end: int,
        src_ip: int,
        dst_ip: int,
        compute_checksum: bool,
    ) -> None:
        try:
            _HEADER.pack_into(
                buf,
                offset,
                self.src_port,
                self.dst_port,
                self.seq & 0xFFFFFFFF,
                self.ack & 0xFFFFFFFF,
                (header_len << 10) | (int(self.flags) & 0xFF),
                self.window,
                0,
                self.urgent,
            )
            if header_len > MIN_HEADER_LEN:
                self._emit_options(buf, offset + MIN_HEADER_LEN)
        except struct.error as exc:
            raise WireError(BAD_FIELD, str(exc)) from exc
        if compute_checksum:
            csum = ~_sum(memoryview(buf)[offset:end], src_ip, dst_ip) & 0xFFFF
            _U16.pack_into(buf, offset + 16, csum)

    def _emit_options(self, buf: bytearray | memoryview, pos: int) -> None:
        if self.mss is not None:
            struct.pack_into("!BBH", buf, pos, OPT_MSS, 4, self.mss)
            pos += 4
        if self.window_scale is not None:
            if not 0 <= self.window_scale <= MAX_WINDOW_SCALE:
                raise WireError(BAD_FIELD, f"tcp window scale {self.window_scale}")
            struct.pack_into("!BBBB", buf, pos, OPT_NOP, OPT_WINDOW_SCALE, 3, self.window_scale)
            pos += 4
        if self.timestamp is not None:
            if self.sack_permitted:
                struct.pack_into("!BB", buf, pos, OPT_SACK_PERMITTED, 2)
            else:
                struct.pack_into("!BB", buf, pos, OPT_NOP, OPT_NOP)
            tsval, tsecr = self.timestamp
            struct.pack_into("!BBII", buf, pos + 2, OPT_TIMESTAMP, 10, tsval, tsecr)
            pos += 12
        elif self.sack_permitted:
            struct.pack_into("!BBBB", buf, pos, OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2)
            pos += 4
        if self.sack_blocks:
            count = len(self.sack_blocks)
            struct.pack_into("!BBBB", buf, pos, OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * count)
            edges = [edge for block in self.sack_blocks for edge in block]
            struct.pack_into(f"!{2 * count}I", buf, pos + 4, *edges)

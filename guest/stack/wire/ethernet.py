"""Ethernet II framing: destination MAC, source MAC, EtherType.

Only the 14-byte Ethernet II header is decoded. An 802.1Q-tagged frame is not an error: it
parses with `ethertype == ETHERTYPE_VLAN` and the tag as the first payload bytes, so the stack
drops it as an unknown EtherType instead of misreading it. Frame check sequence and minimum-size
padding are the device's business, not this codec's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._buf import BytesLike, as_view
from .errors import BAD_FIELD, NO_ROOM, TRUNCATED, WireError

HEADER_LEN: Final = 14

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_VLAN: Final = 0x8100
ETHERTYPE_IPV6: Final = 0x86DD

_HEADER = struct.Struct("!6s6sH")
_U16 = struct.Struct("!H")


class EthernetFrame:
    """Zero-copy view of an Ethernet II frame.

    The constructor does not validate (for building frames in fresh buffers); use
    `new_checked()` on received bytes before reading fields.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: BytesLike) -> None:
        self.buffer = as_view(buffer)

    @classmethod
    def new_checked(cls, buffer: BytesLike) -> EthernetFrame:
        """View `buffer` after `check_len()`: raises `WireError` if it cannot hold a header."""
        frame = cls(buffer)
        frame.check_len()
        return frame

    def check_len(self) -> None:
        """Raise `WireError("truncated")` unless the buffer holds a full header."""
        if len(self.buffer) < HEADER_LEN:
            raise WireError(TRUNCATED, f"ethernet frame of {len(self.buffer)} bytes")

    @property
    def dst_addr(self) -> bytes:
        return bytes(self.buffer[0:6])

    @dst_addr.setter
    def dst_addr(self, value: bytes) -> None:
        self.buffer[0:6] = value

    @property
    def src_addr(self) -> bytes:
        return bytes(self.buffer[6:12])

    @src_addr.setter
    def src_addr(self, value: bytes) -> None:
        self.buffer[6:12] = value

    @property
    def ethertype(self) -> int:
        return _U16.unpack_from(self.buffer, 12)[0]

    @ethertype.setter
    def ethertype(self, value: int) -> None:
        _U16.pack_into(self.buffer, 12, value)

    @property
    def payload(self) -> memoryview:
        """Everything after the header (zero-copy; may include Ethernet padding)."""
        return self.buffer[HEADER_LEN:]


@dataclass(slots=True)
class EthernetRepr:
    """High-level Ethernet II header; MACs are 6-byte `bytes`."""

    src_addr: bytes
    dst_addr: bytes
    ethertype: int

    @classmethod
    def parse(cls, frame: EthernetFrame | BytesLike) -> EthernetRepr:
        """Decode the header; raises `WireError` if the frame is shorter than 14 bytes."""
        buf = frame.buffer if isinstance(frame, EthernetFrame) else as_view(frame)
        if len(buf) < HEADER_LEN:
            raise WireError(TRUNCATED, f"ethernet frame of {len(buf)} bytes")
        dst, src, ethertype = _HEADER.unpack_from(buf, 0)
        return cls(src, dst, ethertype)

    def buffer_len(self) -> int:
        """Bytes `emit()` writes."""
        return HEADER_LEN

    def emit(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the header at `buf[offset:]`; returns the number of bytes written (14)."""
        if offset < 0 or len(buf) - offset < HEADER_LEN:
            raise WireError(NO_ROOM, "ethernet header")
        if len(self.src_addr) != 6 or len(self.dst_addr) != 6:
            raise WireError(BAD_FIELD, "MAC addresses must be 6 bytes")
        try:
            _HEADER.pack_into(buf, offset, self.dst_addr, self.src_addr, self.ethertype)
        except struct.error as exc:
            raise WireError(BAD_FIELD, str(exc)) from exc
        return HEADER_LEN

"""ARP for IPv4 over Ethernet (RFC 826): requests and replies.

Only hardware type 1 (Ethernet) with protocol type 0x0800 (IPv4), 6-byte and 4-byte addresses is
decoded; anything else is well-formed ARP this stack cannot use and raises
`WireError("unsupported")`. Protocol addresses are ints like everywhere else (see `addr.py`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._buf import BytesLike, as_view
from .errors import BAD_FIELD, NO_ROOM, TRUNCATED, UNSUPPORTED, WireError

PACKET_LEN: Final = 28  # Ethernet/IPv4 flavour
HTYPE_ETHERNET: Final = 1
PTYPE_IPV4: Final = 0x0800
OP_REQUEST: Final = 1
OP_REPLY: Final = 2

# htype, ptype, hlen, plen, oper, sha, spa, tha, tpa
_PACKET = struct.Struct("!HHBBH6sI6sI")


class ArpPacket:
    """Zero-copy view of an ARP packet (fields at their Ethernet/IPv4 offsets).

    Unchecked on construction; `new_checked()` validates length for received bytes.
    """

    __slots__ = ("buffer",)

    def __init__(self, buffer: BytesLike) -> None:
        self.buffer = as_view(buffer)

    @classmethod
    def new_checked(cls, buffer: BytesLike) -> ArpPacket:
        packet = cls(buffer)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """Raise `WireError("truncated")` unless the buffer holds the 8-byte fixed part and the
        addresses its hlen/plen announce."""
        n = len(self.buffer)
        if n < 8:
            raise WireError(TRUNCATED, f"arp packet of {n} bytes")
        hlen, plen = self.buffer[4], self.buffer[5]
        if n < 8 + 2 * (hlen + plen):
            raise WireError(TRUNCATED, f"arp packet of {n} bytes for hlen={hlen} plen={plen}")

    @property
    def hardware_type(self) -> int:
        return struct.unpack_from("!H", self.buffer, 0)[0]

    @property
    def protocol_type(self) -> int:
        return struct.unpack_from("!H", self.buffer, 2)[0]

    @property
    def hardware_len(self) -> int:
        return self.buffer[4]

    @property
    def protocol_len(self) -> int:
        return self.buffer[5]

    @property
    def operation(self) -> int:
        return struct.unpack_from("!H", self.buffer, 6)[0]


@dataclass(slots=True)
class ArpRepr:
    """An Ethernet/IPv4 ARP request or reply."""

    operation: int
    source_hardware_addr: bytes
    source_protocol_addr: int
    target_hardware_addr: bytes
    target_protocol_addr: int

    @classmethod
    def parse(cls, packet: ArpPacket | BytesLike) -> ArpRepr:
        """Decode; `WireError` if truncated, "unsupported" for non-Ethernet/IPv4 or an opcode
        other than request/reply."""
        buf = packet.buffer if isinstance(packet, ArpPacket) else as_view(packet)
        if len(buf) < 8:
            raise WireError(TRUNCATED, f"arp packet of {len(buf)} bytes")
        htype, ptype, hlen, plen, _ = struct.unpack_from("!HHBBH", buf, 0)
        if htype != HTYPE_ETHERNET or ptype != PTYPE_IPV4 or hlen != 6 or plen != 4:
            raise WireError(UNSUPPORTED, f"arp htype={htype} ptype={ptype:#x} {hlen}/{plen}")
        if len(buf) < PACKET_LEN:
            raise WireError(TRUNCATED, f"arp packet of {len(buf)} bytes")
        _, _, _, _, op, sha, spa, tha, tpa = _PACKET.unpack_from(buf, 0)
        if op not in (OP_REQUEST, OP_REPLY):
            raise WireError(UNSUPPORTED, f"arp operation {op}")
        return cls(op, sha, spa, tha, tpa)

    def buffer_len(self) -> int:
        """Bytes `emit()` writes."""
        return PACKET_LEN

    def emit(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the packet at `buf[offset:]`; returns bytes written (28)."""
        if offset < 0 or len(buf) - offset < PACKET_LEN:
            raise WireError(NO_ROOM, "arp packet")
        if len(self.source_hardware_addr) != 6 or len(self.target_hardware_addr) != 6:
            raise WireError(BAD_FIELD, "MAC addresses must be 6 bytes")
        try:
            _PACKET.pack_into(
                buf,
                offset,
                HTYPE_ETHERNET,
                PTYPE_IPV4,
                6,
                4,
                self.operation,
                self.source_hardware_addr,
                self.source_protocol_addr,
                self.target_hardware_addr,
                self.target_protocol_addr,
            )
        except struct.error as exc:
            raise WireError(BAD_FIELD, str(exc)) from exc
        return PACKET_LEN

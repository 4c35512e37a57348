"""Transmit checksum offload: what a frame carries when the device finishes its checksum.

The convention is Linux's CHECKSUM_PARTIAL, which virtio_net_hdr's NEEDS_CSUM and NICs with
checksum offload (e1000's TCP/UDP checksum context) share: the TCP or UDP checksum field holds
the *seed*, the folded, uncomplemented sum of the pseudo-header computed with the frame's whole
L4 length; the device adds the sum over the L4 header and payload and stores the complement.
The IPv4 header checksum is always complete (20 bytes cost nothing, and a device segmenting a
TSO frame rewrites it per segment anyway).

Frames that may be offloaded: TCP frames (always for `TsoFrame`s, whose full checksum would be
useless to a device that cuts them up) and unfragmented UDP frames. Fragments and ICMP always
carry complete checksums: a device cannot finish a checksum spread over several frames.
"""

from __future__ import annotations

import struct
from typing import Final

from guest.stack.wire.checksum import checksum, fold, ones_sum, pseudo_header_sum
from guest.stack.wire.ipv4 import PROTO_TCP, PROTO_UDP

#: Offset of the checksum field in the TCP and UDP headers.
TCP_CSUM_OFFSET: Final = 16
UDP_CSUM_OFFSET: Final = 6

_U16 = struct.Struct("!H")
_IP_FIELDS = struct.Struct("!BxH8xII")  # ver/ihl, total length, src, dst


def fill_partial_checksums(buf: bytearray, l3: int) -> None:
    """Complete the IPv4 header checksum and put the L4 seed into the TCP/UDP checksum field
    of the frame in `buf` whose IPv4 header starts at `l3` (headers otherwise written)."""
    ver_ihl, total, src, dst = _IP_FIELDS.unpack_from(buf, l3)
    ihl = (ver_ihl & 0x0F) << 2
    buf[l3 + 10 : l3 + 12] = b"\x00\x00"
    _U16.pack_into(buf, l3 + 10, checksum(memoryview(buf)[l3 : l3 + ihl]))
    protocol = buf[l3 + 9]
    l4 = l3 + ihl
    at = l4 + (TCP_CSUM_OFFSET if protocol == PROTO_TCP else UDP_CSUM_OFFSET)
    _U16.pack_into(buf, at, fold(pseudo_header_sum(src, dst, protocol, total - ihl)))


def finish_checksums(frame: bytearray, l3: int = 14) -> None:
    """Do in software what the device does for a CHECKSUM_PARTIAL frame: replace the seed in
    a TCP or unfragmented UDP frame with the full checksum (for tests and offload-less
    devices). Other frames are left alone."""
    protocol = frame[l3 + 9]
    if protocol not in (PROTO_TCP, PROTO_UDP) or _U16.unpack_from(frame, l3 + 6)[0] & 0x3FFF:
        return
    ihl = (frame[l3] & 0x0F) << 2
    l4 = l3 + ihl
    at = l4 + (TCP_CSUM_OFFSET if protocol == PROTO_TCP else UDP_CSUM_OFFSET)
    seed = _U16.unpack_from(frame, at)[0]
    frame[at : at + 2] = b"\x00\x00"
    total = _U16.unpack_from(frame, l3 + 2)[0]
    value = ~ones_sum(memoryview(frame)[l4 : l3 + total], seed) & 0xFFFF
    if protocol == PROTO_UDP and value == 0:
        value = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    _U16.pack_into(frame, at, value)

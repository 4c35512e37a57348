"""virtio_net_hdr: the 10-byte header PACKET_VNET_HDR puts in front of every frame.

Why bother: with it a packet socket speaks the offload language of the kernel's skb. On
transmit the stack can hand over one TCP "super-segment" of up to 64 KiB (gso_type TCPV4,
gso_size = MSS) and leave segmentation to the NIC (TSO) or to the kernel (GSO), and can leave
the TCP/UDP checksum to the NIC (NEEDS_CSUM with csum_start/csum_offset). On receive, GRO
hands over coalesced segments in one frame, and DATA_VALID says the checksum was already
verified. In pure Python, per-frame cost dominates, so fewer, larger frames are the one big
lever left.

Layout (linux/virtio_net.h, struct virtio_net_hdr), all fields in the host's byte order for a
packet socket (the kernel uses vio_le(), i.e. little-endian on little-endian hosts, which is
native order on every host this runs on)::

    u8  flags        NEEDS_CSUM=1, DATA_VALID=2, RSC_INFO=4
    u8  gso_type     NONE=0, TCPV4=1, UDP=3, TCPV6=4 (| ECN=0x80)
    u16 hdr_len      bytes of headers (Ethernet+IP+TCP) copied into the skb's linear part
    u16 gso_size     payload bytes per segment (the MSS)
    u16 csum_start   where checksumming starts, from the start of the Ethernet frame
    u16 csum_offset  where the result goes, from csum_start (16 for TCP, 6 for UDP)

A frame sent with NEEDS_CSUM must carry in its checksum field the *seed*: the folded
one's-complement sum of the pseudo-header, not complemented, computed with the full L4 length
of the frame as given (for a TSO super-segment the kernel adjusts it per segment). That is
what `partial_csum_seed()` returns. Received frames with NEEDS_CSUM (sent by a local kernel
stack over a veth, say) carry such a seed too, so their checksum does not verify as-is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ._buf import BytesLike
from .checksum import fold, pseudo_header_sum

HEADER_LEN: Final = 10

F_NEEDS_CSUM: Final = 1
F_DATA_VALID: Final = 2
F_RSC_INFO: Final = 4

GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_ECN: Final = 0x80

#: Offset of the checksum field inside the TCP and UDP headers (for csum_offset).
TCP_CSUM_OFFSET: Final = 16
UDP_CSUM_OFFSET: Final = 6

_HDR = struct.Struct("=BBHHHH")
_KNOWN_FLAGS = F_NEEDS_CSUM | F_DATA_VALID | F_RSC_INFO
_KNOWN_GSO = {GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6}


@dataclass(slots=True, frozen=True)
class VnetHdr:
    """One virtio_net_hdr. The all-zero header (`VnetHdr()`) means "plain frame"."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @classmethod
    def parse(cls, buf: BytesLike, offset: int = 0) -> VnetHdr:
        """Decode the header at `buf[offset:]`; ValueError if there are not 10 bytes."""
        if offset < 0 or len(buf) - offset < HEADER_LEN:
            raise ValueError(f"virtio_net_hdr needs {HEADER_LEN} bytes")
        return cls(*_HDR.unpack_from(buf, offset))

    def emit(self, buf: bytearray | memoryview, offset: int = 0) -> int:
        """Write the header at `buf[offset:]`; returns 10. ValueError on impossible fields."""
        if offset < 0 or len(buf) - offset < HEADER_LEN:
            raise ValueError(f"no room for a {HEADER_LEN}-byte virtio_net_hdr")
        try:
            _HDR.pack_into(
                buf,
                offset,
                self.flags,
                self.gso_type,
                self.hdr_len,
                self.gso_size,
                self.csum_start,
                self.csum_offset,
            )
        except struct.error as exc:
            raise ValueError(f"virtio_net_hdr field out of range: {exc}") from exc
        return HEADER_LEN

    def to_bytes(self) -> bytes:
        """The 10 header bytes (for prepending to a frame that has no headroom)."""
        buf = bytearray(HEADER_LEN)
        self.emit(buf)
        return bytes(buf)

    @property
    def needs_csum(self) -> bool:
        """The L4 checksum field holds only the pseudo-header seed (CHECKSUM_PARTIAL)."""
        return bool(self.flags & F_NEEDS_CSUM)

    @property
    def data_valid(self) -> bool:
        """The checksum was verified below us (CHECKSUM_UNNECESSARY): skip verifying it."""
        return bool(self.flags & F_DATA_VALID)

    @property
    def is_gso(self) -> bool:
        """The frame is a super-segment to be cut into `gso_size`-byte segments."""
        return self.gso_type != GSO_NONE

    def check(self, frame_len: int) -> None:
        """Raise ValueError for a header that cannot be right on transmit.

        `frame_len` is the length of the Ethernet frame after the header. Catches what
        `__packet_snd_vnet_parse` + `virtio_net_hdr_to_skb` reject (EINVAL on a plain socket,
        a silently skipped slot on a TX ring), and, stricter than the kernel, a GSO frame
        without NEEDS_CSUM: the kernel would have to guess where the TCP header is.
        """
        if self.flags & ~_KNOWN_FLAGS:
            raise ValueError(f"unknown virtio_net_hdr flags {self.flags:#x}")
        if self.gso_type & ~GSO_ECN not in _KNOWN_GSO:
            raise ValueError(f"unknown gso_type {self.gso_type:#x}")
        if self.needs_csum and self.csum_start + self.csum_offset + 2 > frame_len:
            raise ValueError("checksum field lies beyond the frame")
        if self.hdr_len > frame_len:
            raise ValueError(f"hdr_len {self.hdr_len} > frame length {frame_len}")
        if self.is_gso:
            if not self.needs_csum:
                raise ValueError("a GSO frame needs F_NEEDS_CSUM (segments get checksums)")
            if self.gso_size == 0:
                raise ValueError("a GSO frame needs gso_size > 0")


def tcp4_tso(
    l2_len: int, ip_header_len: int, tcp_header_len: int, mss: int, ecn: bool = False
) -> VnetHdr:
    """Header for an IPv4/TCP super-segment that the NIC or kernel cuts into `mss`-byte
    segments, with checksum offload (each segment's checksum is filled in below us).

    The frame's IPv4 total length must cover the whole super-segment (at most 65535) and its
    TCP checksum field must hold `partial_csum_seed(src, dst, 6, tcp_len)`.
    """
    start = l2_len + ip_header_len
    return VnetHdr(
        flags=F_NEEDS_CSUM,
        gso_type=GSO_TCPV4 | (GSO_ECN if ecn else 0),
        hdr_len=start + tcp_header_len,
        gso_size=mss,
        csum_start=start,
        csum_offset=TCP_CSUM_OFFSET,
    )


def csum_offload(l2_len: int, ip_header_len: int, csum_offset: int) -> VnetHdr:
    """Header for one ordinary frame whose TCP (`TCP_CSUM_OFFSET`) or UDP (`UDP_CSUM_OFFSET`)
    checksum is left to the NIC; the field must hold the pseudo-header seed."""
    start = l2_len + ip_header_len
    return VnetHdr(
        flags=F_NEEDS_CSUM,
        hdr_len=start + csum_offset + 2,
        csum_start=start,
        csum_offset=csum_offset,
    )


def partial_csum_seed(src_addr: int, dst_addr: int, protocol: int, l4_len: int) -> int:
    """What to store in the TCP/UDP checksum field of a NEEDS_CSUM frame: the folded,
    *uncomplemented* pseudo-header sum (Linux's `~csum_tcpudp_magic(...)`, CHECKSUM_PARTIAL).

    The NIC (or the kernel) then adds the sum over the L4 header and payload and stores the
    complement, which yields the ordinary checksum.
    """
    return fold(pseudo_header_sum(src_addr, dst_addr, protocol, l4_len))


PLAIN: Final = VnetHdr()
#: The header bytes of a plain frame: no offload asked, nothing known.
PLAIN_BYTES: Final = PLAIN.to_bytes()

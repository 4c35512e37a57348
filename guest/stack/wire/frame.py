"""Build whole frames in place: headers written in front of a payload already in the buffer.

The transmit path reserves `*_payload_offset()` bytes of headroom, writes (or receives) the
payload there, then calls `emit_tcp_frame` / `emit_udp_frame` to fill in Ethernet, IPv4 and
transport headers in front of it. Checksums are computed over the payload view in the buffer;
nothing is concatenated and the payload is never copied by this layer.

`eth=None` builds a bare IPv4 packet (for L3 devices such as TUN).
"""

from __future__ import annotations

from ._buf import BytesLike
from .errors import NO_ROOM, WireError
from .ethernet import HEADER_LEN as ETHERNET_HEADER_LEN
from .ethernet import EthernetRepr
from .ipv4 import MIN_HEADER_LEN as IPV4_HEADER_LEN
from .ipv4 import PROTO_TCP, PROTO_UDP, Ipv4Repr
from .tcp import TcpRepr
from .udp import HEADER_LEN as UDP_HEADER_LEN
from .udp import UdpRepr


def tcp_payload_offset(tcp: TcpRepr, ethernet: bool = True) -> int:
    """Where the TCP payload starts in a frame built by `emit_tcp_frame` (options count)."""
    return (ETHERNET_HEADER_LEN if ethernet else 0) + IPV4_HEADER_LEN + tcp.header_len()


def udp_payload_offset(ethernet: bool = True) -> int:
    """Where the UDP payload starts in a frame built by `emit_udp_frame`."""
    return (ETHERNET_HEADER_LEN if ethernet else 0) + IPV4_HEADER_LEN + UDP_HEADER_LEN


def emit_tcp_frame(
    buf: bytearray | memoryview,
    eth: EthernetRepr | None,
    ip: Ipv4Repr,
    tcp: TcpRepr,
    payload_len: int,
    offset: int = 0,
    compute_checksums: bool = True,
) -> int:
    """Write [Ethernet +] IPv4 + TCP headers at `buf[offset:]` in front of `payload_len` bytes
    already at `offset + tcp_payload_offset(tcp, eth is not None)`; returns the frame length.

    Fills in `ip.protocol` and `ip.payload_len` (they follow from the rest) and ignores
    `tcp.payload` (the payload is what is in `buf`).
    """
    tcp_len = tcp.header_len() + payload_len
    pos = offset
    _check_room(buf, offset, eth, tcp_len)
    if eth is not None:
        pos += eth.emit(buf, pos)
    ip.protocol = PROTO_TCP
    ip.payload_len = tcp_len
    pos += ip.emit(buf, pos, compute_checksums)
    tcp.emit_header(buf, pos, ip.src_addr, ip.dst_addr, payload_len, compute_checksums)
    return pos + tcp_len - offset


def emit_udp_frame(
    buf: bytearray | memoryview,
    eth: EthernetRepr | None,
    ip: Ipv4Repr,
    udp: UdpRepr,
    payload_len: int,
    offset: int = 0,
    compute_checksums: bool = True,
) -> int:
    """UDP counterpart of `emit_tcp_frame`: payload at `offset + udp_payload_offset(...)`."""
    udp_len = UDP_HEADER_LEN + payload_len
    pos = offset
    _check_room(buf, offset, eth, udp_len)
    if eth is not None:
        pos += eth.emit(buf, pos)
    ip.protocol = PROTO_UDP
    ip.payload_len = udp_len
    pos += ip.emit(buf, pos, compute_checksums)
    udp.emit_header(buf, pos, ip.src_addr, ip.dst_addr, payload_len, compute_checksums)
    return pos + udp_len - offset


def _check_room(buf: BytesLike, offset: int, eth: EthernetRepr | None, transport_len: int) -> None:
    # Checked up front so that a failed build leaves no half-written headers behind.
    end = offset + (ETHERNET_HEADER_LEN if eth is not None else 0) + IPV4_HEADER_LEN + transport_len
    if offset < 0 or len(buf) < end:
        raise WireError(NO_ROOM, f"frame needs {end} bytes, buffer has {len(buf)}")

"""Whole frames built in place: headers in front of a payload already in the buffer."""

from __future__ import annotations

import os

import pytest

from guest.stack.wire.addr import ipv4, mac
from guest.stack.wire.errors import WireError
from guest.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, EthernetRepr
from guest.stack.wire.frame import (
    emit_tcp_frame,
    emit_udp_frame,
    tcp_payload_offset,
    udp_payload_offset,
)
from guest.stack.wire.ipv4 import PROTO_TCP, PROTO_UDP, Ipv4Packet, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr
from guest.stack.wire.udp import UdpRepr

from .test_wire_tcp import ref_tcp_checksum
from .test_wire_udp import ref_udp_checksum

SRC, DST = ipv4("10.0.0.1"), ipv4("10.0.0.2")
ETH = EthernetRepr(mac("52:54:00:00:00:01"), mac("52:54:00:00:00:02"), ETHERTYPE_IPV4)


def ip_template() -> Ipv4Repr:
    return Ipv4Repr(SRC, DST, protocol=0, payload_len=0, ident=42, dont_frag=True)


@pytest.mark.parametrize("payload_len", [0, 1, 1448])
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("as_memoryview", [False, True])
def test_tcp_frame_in_place(payload_len: int, offset: int, as_memoryview: bool) -> None:
    tcp = TcpRepr(40000, 80, 7, 9, TcpFlags.ACK | TcpFlags.PSH, 500, timestamp=(1, 2))
    payload = os.urandom(payload_len)
    start = offset + tcp_payload_offset(tcp)
    buf = bytearray(start + payload_len)
    buf[start:] = payload
    ip = ip_template()
    target = memoryview(buf) if as_memoryview else buf
    n = emit_tcp_frame(target, ETH, ip, tcp, payload_len, offset=offset)
    assert n == len(buf) - offset
    assert (ip.protocol, ip.payload_len) == (PROTO_TCP, 32 + payload_len)

    frame = EthernetFrame.new_checked(memoryview(buf)[offset:])
    assert EthernetRepr.parse(frame) == ETH
    packet = Ipv4Packet(frame.payload)
    parsed_ip = Ipv4Repr.parse(packet)
    assert parsed_ip == ip
    parsed = TcpRepr.parse(packet.payload, SRC, DST)
    assert bytes(parsed.payload) == payload
    assert parsed.payload.obj is buf  # type: ignore[union-attr]
    segment = bytes(packet.payload)
    assert int.from_bytes(segment[16:18], "big") == ref_tcp_checksum(SRC, DST, segment)


def test_udp_frame_in_place() -> None:
    udp = UdpRepr(5353, 5353)
    payload = b"query"
    start = udp_payload_offset()
    buf = bytearray(start + len(payload))
    buf[start:] = payload
    ip = ip_template()
    assert emit_udp_frame(buf, ETH, ip, udp, len(payload)) == len(buf)
    assert (ip.protocol, ip.payload_len) == (PROTO_UDP, 13)
    packet = Ipv4Packet(EthernetFrame.new_checked(buf).payload)
    Ipv4Repr.parse(packet)
    parsed = UdpRepr.parse(packet.payload, SRC, DST)
    assert (parsed.src_port, bytes(parsed.payload)) == (5353, payload)
    datagram = bytes(packet.payload)
    assert int.from_bytes(datagram[6:8], "big") == ref_udp_checksum(SRC, DST, datagram)


def test_bare_ipv4_packet_without_ethernet() -> None:
    tcp = TcpRepr(1, 2, 3, 4, TcpFlags.SYN, 5, mss=1460)
    start = tcp_payload_offset(tcp, ethernet=False)
    assert start == 20 + 24
    buf = bytearray(start)
    assert emit_tcp_frame(buf, None, ip_template(), tcp, 0) == start
    packet = Ipv4Packet.new_checked(buf)
    ip = Ipv4Repr.parse(packet)
    assert TcpRepr.parse(packet.payload, ip.src_addr, ip.dst_addr).mss == 1460
    assert udp_payload_offset(ethernet=False) == 28


def test_no_room_leaves_buffer_untouched() -> None:
    tcp = TcpRepr(1, 2, 3, 4, TcpFlags.ACK, 5)
    buf = bytearray(tcp_payload_offset(tcp) + 9)
    with pytest.raises(WireError) as info:
        emit_tcp_frame(buf, ETH, ip_template(), tcp, 10)
    assert info.value.reason == "no-room"
    assert not any(buf)
    with pytest.raises(WireError):
        emit_udp_frame(bytearray(41), ETH, ip_template(), UdpRepr(1, 2), 0)

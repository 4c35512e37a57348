"""ARP for Ethernet/IPv4: a hand-written request, round trips, unsupported variants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire.addr import ipv4, mac
from guest.stack.wire.arp import OP_REPLY, OP_REQUEST, PACKET_LEN, ArpPacket, ArpRepr
from guest.stack.wire.errors import WireError

PROPS = settings(max_examples=300, deadline=None)

macs = st.binary(min_size=6, max_size=6)
ipv4s = st.integers(0, 0xFFFFFFFF)
arp_reprs = st.builds(ArpRepr, st.sampled_from([OP_REQUEST, OP_REPLY]), macs, ipv4s, macs, ipv4s)

# "Who has 192.168.0.2? Tell 192.168.0.1", as it appears after the Ethernet header.
REQUEST = bytes.fromhex(
    "0001 0800 06 04 0001 525400123456 c0a80001 000000000000 c0a80002".replace(" ", "")
)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_known_request(kind: type) -> None:
    assert ArpRepr.parse(kind(REQUEST)) == ArpRepr(
        OP_REQUEST, mac("52:54:00:12:34:56"), ipv4("192.168.0.1"), bytes(6), ipv4("192.168.0.2")
    )
    packet = ArpPacket.new_checked(kind(REQUEST))
    assert (packet.hardware_type, packet.protocol_type, packet.operation) == (1, 0x0800, 1)
    assert (packet.hardware_len, packet.protocol_len) == (6, 4)


def test_emit_known_request() -> None:
    buf = bytearray(PACKET_LEN)
    ArpRepr.parse(REQUEST).emit(buf)
    assert bytes(buf) == REQUEST


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (REQUEST[:7], "truncated"),
        (REQUEST[:27], "truncated"),
        (b"\x00\x06" + REQUEST[2:], "unsupported"),  # IEEE 802 hardware type
        (REQUEST[:2] + b"\x86\xdd" + REQUEST[4:], "unsupported"),  # IPv6 protocol type
        (REQUEST[:6] + b"\x00\x03" + REQUEST[8:], "unsupported"),  # RARP request opcode
    ],
)
def test_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        ArpRepr.parse(data)
    assert info.value.reason == reason


def test_check_len_uses_announced_address_sizes() -> None:
    with pytest.raises(WireError):
        ArpPacket.new_checked(REQUEST[:27])
    ArpPacket.new_checked(REQUEST)


@PROPS
@given(arp_reprs, st.integers(0, 8))
def test_round_trip(repr_: ArpRepr, offset: int) -> None:
    buf = bytearray(offset + repr_.buffer_len())
    assert repr_.emit(buf, offset) == PACKET_LEN
    assert ArpRepr.parse(bytes(buf[offset:])) == repr_

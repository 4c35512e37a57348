"""Ethernet II framing: known bytes, round trips, VLAN frames that must not crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire.errors import WireError
from guest.stack.wire.ethernet import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_VLAN,
    HEADER_LEN,
    EthernetFrame,
    EthernetRepr,
)

PROPS = settings(max_examples=300, deadline=None)

macs = st.binary(min_size=6, max_size=6)
ethernet_reprs = st.builds(EthernetRepr, macs, macs, st.integers(0, 0xFFFF))

FRAME = bytes.fromhex("ffffffffffff 525400123456 0806".replace(" ", "")) + b"payload"


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_known_frame(kind: type) -> None:
    repr_ = EthernetRepr.parse(kind(FRAME))
    assert repr_ == EthernetRepr(bytes.fromhex("525400123456"), b"\xff" * 6, ETHERTYPE_ARP)
    frame = EthernetFrame.new_checked(kind(FRAME))
    assert frame.dst_addr == b"\xff" * 6
    assert frame.src_addr == bytes.fromhex("525400123456")
    assert frame.ethertype == ETHERTYPE_ARP
    assert bytes(frame.payload) == b"payload"


def test_vlan_tagged_frame_parses_as_vlan_ethertype() -> None:
    tagged = FRAME[:12] + b"\x81\x00\x00\x64\x08\x00" + bytes(20)
    repr_ = EthernetRepr.parse(tagged)
    assert repr_.ethertype == ETHERTYPE_VLAN
    assert bytes(EthernetFrame(tagged).payload[:4]) == b"\x00\x64\x08\x00"


def test_truncated() -> None:
    with pytest.raises(WireError) as info:
        EthernetRepr.parse(FRAME[:13])
    assert info.value.reason == "truncated"
    with pytest.raises(WireError):
        EthernetFrame.new_checked(b"")


def test_setters_build_in_place() -> None:
    buf = bytearray(HEADER_LEN + 4)
    frame = EthernetFrame(buf)
    frame.dst_addr = b"\x01" * 6
    frame.src_addr = b"\x02" * 6
    frame.ethertype = ETHERTYPE_IPV4
    assert EthernetRepr.parse(buf) == EthernetRepr(b"\x02" * 6, b"\x01" * 6, ETHERTYPE_IPV4)


def test_emit_errors() -> None:
    repr_ = EthernetRepr(b"\x02" * 6, b"\x01" * 6, ETHERTYPE_IPV4)
    with pytest.raises(WireError) as info:
        repr_.emit(bytearray(13))
    assert info.value.reason == "no-room"
    with pytest.raises(WireError) as info:
        EthernetRepr(b"\x02" * 5, b"\x01" * 6, 0).emit(bytearray(14))
    assert info.value.reason == "bad-field"
    with pytest.raises(WireError) as info:
        EthernetRepr(b"\x02" * 6, b"\x01" * 6, 0x10000).emit(bytearray(14))
    assert info.value.reason == "bad-field"


@PROPS
@given(ethernet_reprs, st.integers(0, 8), st.binary(max_size=16))
def test_round_trip(repr_: EthernetRepr, offset: int, tail: bytes) -> None:
    buf = bytearray(offset + repr_.buffer_len() + len(tail))
    assert repr_.emit(buf, offset) == HEADER_LEN
    assert EthernetRepr.parse(memoryview(buf)[offset:]) == repr_

"""UDP: hand-computed checksum, zero checksum semantics, length rules, round trips."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire.addr import ipv4
from guest.stack.wire.errors import WireError
from guest.stack.wire.udp import HEADER_LEN, UdpPacket, UdpRepr

from .test_wire_checksum import ref_checksum, ref_pseudo_header

PROPS = settings(max_examples=300, deadline=None)

SRC, DST = ipv4("192.168.0.1"), ipv4("192.168.0.199")
# 53 -> 12345, length 12, payload "abcd". By hand: pseudo-header c0a8+0001+c0a8+00c7+0011+000c
# = 18235; UDP words 0035+3039+000c+6162+6364 = f540; 18235 + f540 = 27775 -> 7775 + 2 = 7777;
# checksum = ~7777 = 8888.
DATAGRAM = bytes.fromhex("0035 3039 000c 8888 6162 6364".replace(" ", ""))

udp_reprs = st.builds(
    UdpRepr, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300)
)
addrs = st.integers(0, 0xFFFFFFFF)


def ref_udp_checksum(src: int, dst: int, datagram: bytes) -> int:
    zeroed = datagram[:6] + b"\0\0" + datagram[8:]
    value = ref_checksum(ref_pseudo_header(src, dst, 17, len(datagram)) + zeroed)
    return value or 0xFFFF


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_hand_computed(kind: type) -> None:
    assert ref_udp_checksum(SRC, DST, DATAGRAM) == 0x8888
    repr_ = UdpRepr.parse(kind(DATAGRAM), SRC, DST)
    assert repr_ == UdpRepr(53, 12345, b"abcd")
    packet = UdpPacket.new_checked(kind(DATAGRAM))
    assert (packet.src_port, packet.dst_port, packet.length, packet.checksum) == (
        53,
        12345,
        12,
        0x8888,
    )
    assert packet.verify_checksum(SRC, DST)


def test_emit_hand_computed() -> None:
    buf = bytearray(12)
    assert UdpRepr(53, 12345, b"abcd").emit(buf, 0, SRC, DST) == 12
    assert bytes(buf) == DATAGRAM


def test_wrong_addresses_fail_checksum() -> None:
    with pytest.raises(WireError) as info:
        UdpRepr.parse(DATAGRAM, SRC, DST + 1)
    assert info.value.reason == "bad-checksum"
    assert UdpRepr.parse(DATAGRAM, SRC, DST + 1, verify_checksum=False).payload == b"abcd"


def test_zero_checksum_means_none() -> None:
    unchecked = DATAGRAM[:6] + b"\0\0" + DATAGRAM[8:]
    assert UdpRepr.parse(unchecked, 1, 2).payload == b"abcd"
    assert UdpPacket(unchecked).verify_checksum(1, 2)
    buf = bytearray(12)
    UdpRepr(53, 12345, b"abcd").emit(buf, 0, SRC, DST, compute_checksum=False)
    assert bytes(buf) == unchecked


def test_computed_zero_is_sent_as_ffff() -> None:
    # Choose the payload word so that the sum is 0xFFFF, i.e. the computed checksum is 0.
    header_sum = ref_checksum(ref_pseudo_header(SRC, DST, 17, 10) + b"\x00\x35\x30\x39\x00\x0a")
    payload = struct.pack("!H", header_sum)
    buf = bytearray(10)
    UdpRepr(53, 12345, payload).emit(buf, 0, SRC, DST)
    assert buf[6:8] == b"\xff\xff"
    assert UdpRepr.parse(buf, SRC, DST).payload == payload


def test_length_rules() -> None:
    # Shorter Length than buffer: the rest (e.g. link padding) is ignored.
    padded = DATAGRAM[:4] + b"\x00\x0a" + b"\0\0" + DATAGRAM[8:]
    assert UdpRepr.parse(padded, SRC, DST).payload == b"ab"
    for data, reason in [
        (DATAGRAM[:7], "truncated"),
        (DATAGRAM[:4] + b"\x00\x07" + DATAGRAM[6:], "bad-length"),
        (DATAGRAM[:4] + b"\x00\x0d" + DATAGRAM[6:], "truncated"),
    ]:
        with pytest.raises(WireError) as info:
            UdpRepr.parse(data, SRC, DST)
        assert info.value.reason == reason


def test_emit_errors() -> None:
    with pytest.raises(WireError) as info:
        UdpRepr(1, 2, b"abcd").emit(bytearray(11), 0, SRC, DST)
    assert info.value.reason == "no-room"
    with pytest.raises(WireError) as info:
        UdpRepr(70000, 2, b"").emit(bytearray(8), 0, SRC, DST)
    assert info.value.reason == "bad-field"


def test_payload_is_zero_copy() -> None:
    buf = bytearray(DATAGRAM)
    repr_ = UdpRepr.parse(buf, SRC, DST)
    assert isinstance(repr_.payload, memoryview) and repr_.payload.obj is buf
    buf[8] = ord("z")
    assert bytes(repr_.payload) == b"zbcd"


@PROPS
@given(udp_reprs, addrs, addrs, st.integers(0, 8))
def test_round_trip_and_reference_checksum(repr_: UdpRepr, src: int, dst: int, offset: int) -> None:
    buf = bytearray(offset + repr_.buffer_len())
    assert repr_.emit(buf, offset, src, dst) == HEADER_LEN + len(repr_.payload)
    datagram = bytes(buf[offset:])
    assert UdpRepr.parse(datagram, src, dst) == repr_
    assert struct.unpack_from("!H", datagram, 6)[0] == ref_udp_checksum(src, dst, datagram)

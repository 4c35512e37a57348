"""IPv4 header: the textbook example, options, length rules, fragment fields, round trips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire.addr import ipv4
from guest.stack.wire.errors import WireError
from guest.stack.wire.ipv4 import PROTO_UDP, Ipv4Packet, Ipv4Repr

from .test_wire_checksum import ref_checksum

PROPS = settings(max_examples=300, deadline=None)

# 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7: 115-byte UDP datagram, DF, TTL 64.
CLASSIC = bytes.fromhex("4500007300004000 4011b861c0a80001 c0a800c7".replace(" ", ""))
CLASSIC_PACKET = CLASSIC + bytes(115 - 20)

ipv4_reprs = st.builds(
    Ipv4Repr,
    src_addr=st.integers(0, 0xFFFFFFFF),
    dst_addr=st.integers(0, 0xFFFFFFFF),
    protocol=st.integers(0, 255),
    payload_len=st.integers(0, 200),
    ttl=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    dont_frag=st.booleans(),
    more_frags=st.booleans(),
    frag_offset=st.integers(0, 0x1FFF).map(lambda units: units * 8),
    dscp=st.integers(0, 63),
    ecn=st.integers(0, 3),
)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_classic_header(kind: type) -> None:
    repr_ = Ipv4Repr.parse(kind(CLASSIC_PACKET))
    assert repr_ == Ipv4Repr(
        ipv4("192.168.0.1"), ipv4("192.168.0.199"), PROTO_UDP, 95, ttl=64, dont_frag=True
    )
    assert not repr_.is_fragment


def test_emit_classic_header_byte_for_byte() -> None:
    buf = bytearray(20)
    repr_ = Ipv4Repr(ipv4("192.168.0.1"), ipv4("192.168.0.199"), PROTO_UDP, 95, dont_frag=True)
    assert repr_.emit(buf) == 20
    assert bytes(buf) == CLASSIC


def test_view_fields() -> None:
    packet = Ipv4Packet.new_checked(CLASSIC_PACKET)
    assert (packet.version, packet.header_len, packet.total_len) == (4, 20, 115)
    assert (packet.ttl, packet.protocol, packet.checksum) == (64, 17, 0xB861)
    assert packet.dont_frag and not packet.more_frags and packet.frag_offset == 0
    assert packet.verify_checksum()
    assert len(packet.payload) == 95 and len(packet.options) == 0


def test_payload_excludes_link_padding() -> None:
    packet = Ipv4Packet.new_checked(CLASSIC_PACKET + b"\xaa" * 10)
    assert len(packet.payload) == 95
    assert Ipv4Repr.parse(CLASSIC_PACKET + b"\xaa" * 10).payload_len == 95


def test_options_are_skipped() -> None:
    # IHL 6 with a 4-byte option (NOP NOP NOP EOL): header 24 bytes, checksum recomputed.
    buf = bytearray(CLASSIC[:20] + b"\x01\x01\x01\x00" + bytes(95))
    buf[0] = 0x46
    buf[2:4] = (24 + 95).to_bytes(2, "big")
    packet = Ipv4Packet(buf)
    packet.fill_checksum()
    assert packet.verify_checksum()
    repr_ = Ipv4Repr.parse(buf)
    assert repr_.payload_len == 95
    assert bytes(packet.options) == b"\x01\x01\x01\x00"
    assert len(packet.payload) == 95


def test_fragment_fields() -> None:
    buf = bytearray(CLASSIC_PACKET)
    buf[6:8] = (0x2000 | 185).to_bytes(2, "big")  # MF, offset 185 * 8 = 1480
    Ipv4Packet(buf).fill_checksum()
    repr_ = Ipv4Repr.parse(buf)
    assert repr_.more_frags and not repr_.dont_frag and repr_.frag_offset == 1480
    assert repr_.is_fragment


def test_setters_and_fill_checksum() -> None:
    buf = bytearray(CLASSIC_PACKET)
    packet = Ipv4Packet(buf)
    packet.ttl = 63
    packet.src_addr = ipv4("10.1.2.3")
    packet.dst_addr = ipv4("10.3.2.1")
    assert not packet.verify_checksum()
    packet.fill_checksum()
    assert packet.verify_checksum()
    assert packet.checksum == ref_checksum(bytes(buf[:10]) + b"\0\0" + bytes(buf[12:20]))
    repr_ = Ipv4Repr.parse(buf)
    assert (repr_.ttl, repr_.src_addr, repr_.dst_addr) == (63, 0x0A010203, 0x0A030201)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:19], "truncated"),
        (lambda b: b[:114], "truncated"),  # shorter than Total Length
        (lambda b: b"\x44" + b[1:], "bad-length"),  # IHL 4
        (lambda b: b"\x4f" + b[1:], "bad-checksum"),  # IHL 15: options present, sum wrong
        (lambda b: b"\x4f" + b[1:30], "truncated"),  # IHL 15 in 30 bytes
        (lambda b: b[:2] + b"\x00\x10" + b[4:], "bad-length"),  # Total Length 16 < 20
        (lambda b: b"\x65" + b[1:], "bad-version"),
        (lambda b: b[:10] + b"\x00\x00" + b[12:], "bad-checksum"),
    ],
)
def test_rejects(mutate: Callable[[bytes], bytes], reason: str) -> None:
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(mutate(CLASSIC_PACKET))
    assert info.value.reason == reason


def test_unverified_parse_accepts_bad_checksum() -> None:
    bad = CLASSIC_PACKET[:10] + b"\x00\x00" + CLASSIC_PACKET[12:]
    assert Ipv4Repr.parse(bad, verify_checksum=False).payload_len == 95


@pytest.mark.parametrize(
    "changes",
    [
        {"frag_offset": 4},  # not a multiple of 8
        {"frag_offset": 0x2000 * 8},  # does not fit 13 bits
        {"payload_len": 0xFFFF},  # Total Length overflows
        {"dscp": 64},
        {"ecn": 4},
        {"ttl": 256},
        {"src_addr": -1},
    ],
)
def test_emit_rejects_out_of_range_fields(changes: dict[str, int]) -> None:
    repr_ = Ipv4Repr.parse(CLASSIC_PACKET)
    for name, value in changes.items():
        setattr(repr_, name, value)
    with pytest.raises(WireError) as info:
        repr_.emit(bytearray(40))
    assert info.value.reason == "bad-field"


def test_emit_no_room() -> None:
    with pytest.raises(WireError) as info:
        Ipv4Repr.parse(CLASSIC_PACKET).emit(bytearray(25), offset=6)
    assert info.value.reason == "no-room"


@PROPS
@given(ipv4_reprs, st.integers(0, 8))
def test_round_trip(repr_: Ipv4Repr, offset: int) -> None:
    buf = bytearray(offset + repr_.buffer_len())
    assert repr_.emit(buf, offset) == 20
    view = memoryview(buf)[offset:]
    assert Ipv4Repr.parse(view) == repr_
    # The header checksum agrees with the word-by-word reference.
    header = bytes(view[:10]) + b"\0\0" + bytes(view[12:20])
    assert Ipv4Packet(view).checksum == ref_checksum(header)

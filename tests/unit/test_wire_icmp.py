"""ICMPv4: hand-computed echo, round trips, destination-unreachable quotes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire.addr import ipv4
from guest.stack.wire.errors import WireError
from guest.stack.wire.icmp import (
    MAX_QUOTE_LEN,
    TYPE_DST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    TYPE_TIME_EXCEEDED,
    UNREACH_FRAG_NEEDED,
    UNREACH_PORT,
    Icmpv4Packet,
    Icmpv4Repr,
)
from guest.stack.wire.ipv4 import PROTO_UDP, Ipv4Repr
from guest.stack.wire.udp import UdpRepr

from .test_wire_checksum import ref_checksum

PROPS = settings(max_examples=300, deadline=None)

# Echo request ident 1 seq 1 data "abcd". By hand: 0800 + 0001 + 0001 + 6162 + 6364 = ccc8,
# checksum = ~ccc8 = 3337.
ECHO = bytes.fromhex("08003337000100016162 6364".replace(" ", ""))

echo_reprs = st.builds(
    Icmpv4Repr,
    msg_type=st.sampled_from([TYPE_ECHO_REQUEST, TYPE_ECHO_REPLY]),
    code=st.just(0),
    ident=st.integers(0, 0xFFFF),
    seq_no=st.integers(0, 0xFFFF),
    data=st.binary(max_size=100),
)


def offending_datagram(payload_len: int = 100) -> bytes:
    """A UDP datagram 10.0.0.1:5000 -> 10.0.0.2:53 as it would be quoted."""
    ip = Ipv4Repr(ipv4("10.0.0.1"), ipv4("10.0.0.2"), PROTO_UDP, 8 + payload_len, ttl=3)
    buf = bytearray(ip.buffer_len())
    ip.emit(buf)
    UdpRepr(5000, 53, bytes(payload_len)).emit(buf, 20, ip.src_addr, ip.dst_addr)
    return bytes(buf)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_hand_computed_echo(kind: type) -> None:
    repr_ = Icmpv4Repr.parse(kind(ECHO))
    assert repr_ == Icmpv4Repr(TYPE_ECHO_REQUEST, 0, 1, 1, b"abcd")
    packet = Icmpv4Packet.new_checked(ECHO)
    assert (packet.msg_type, packet.code, packet.checksum) == (8, 0, 0x3337)
    assert (packet.ident, packet.seq_no, bytes(packet.data)) == (1, 1, b"abcd")
    assert packet.verify_checksum()


def test_emit_hand_computed_echo() -> None:
    buf = bytearray(len(ECHO))
    assert Icmpv4Repr(TYPE_ECHO_REQUEST, 0, 1, 1, b"abcd").emit(buf) == len(ECHO)
    assert bytes(buf) == ECHO


def test_fill_checksum() -> None:
    buf = bytearray(ECHO)
    buf[2:4] = b"\xde\xad"
    packet = Icmpv4Packet(buf)
    assert not packet.verify_checksum()
    packet.fill_checksum()
    assert bytes(buf) == ECHO


def test_bad_checksum_and_truncation() -> None:
    with pytest.raises(WireError) as info:
        Icmpv4Repr.parse(ECHO[:-1] + b"\x00")
    assert info.value.reason == "bad-checksum"
    with pytest.raises(WireError) as info:
        Icmpv4Repr.parse(ECHO[:7])
    assert info.value.reason == "truncated"


def test_unknown_type_is_unsupported() -> None:
    buf = bytearray(12)
    buf[0] = 13  # timestamp request
    Icmpv4Packet(buf).fill_checksum()
    with pytest.raises(WireError) as info:
        Icmpv4Repr.parse(buf)
    assert info.value.reason == "unsupported"


def test_port_unreachable_round_trip_and_quote() -> None:
    datagram = offending_datagram()
    repr_ = Icmpv4Repr.dst_unreachable(UNREACH_PORT, datagram)
    buf = bytearray(repr_.buffer_len())
    repr_.emit(buf)
    parsed = Icmpv4Repr.parse(buf)
    assert parsed == repr_
    assert parsed.quoted is not None
    assert parsed.quoted.header.src_addr == ipv4("10.0.0.1")
    assert parsed.quoted.header.protocol == PROTO_UDP
    assert parsed.quoted.header.payload_len == 108
    assert parsed.quoted.ports == (5000, 53)
    # Checksum over the whole message agrees with the reference.
    assert Icmpv4Packet(buf).checksum == ref_checksum(bytes(buf[:2]) + b"\0\0" + bytes(buf[4:]))


def test_quote_is_capped_at_576_byte_message() -> None:
    repr_ = Icmpv4Repr.dst_unreachable(UNREACH_PORT, offending_datagram(1400))
    assert len(repr_.data) == MAX_QUOTE_LEN
    assert 20 + repr_.buffer_len() == 576


def test_frag_needed_carries_mtu() -> None:
    repr_ = Icmpv4Repr.dst_unreachable(UNREACH_FRAG_NEEDED, offending_datagram(), 1400)
    buf = bytearray(repr_.buffer_len())
    repr_.emit(buf)
    assert Icmpv4Packet(buf).next_hop_mtu == 1400
    assert Icmpv4Repr.parse(buf).next_hop_mtu == 1400


def test_time_exceeded_is_decoded() -> None:
    quote = offending_datagram()[:28]
    repr_ = Icmpv4Repr(TYPE_TIME_EXCEEDED, 0, data=quote)
    buf = bytearray(repr_.buffer_len())
    repr_.emit(buf)
    parsed = Icmpv4Repr.parse(buf)
    assert parsed.quoted is not None and parsed.quoted.ports == (5000, 53)


@pytest.mark.parametrize(
    ("quote", "reason"),
    [
        (b"", "truncated"),
        (bytes(19), "truncated"),
        (b"\x65" + bytes(27), "bad-version"),
        (b"\x44" + bytes(27), "bad-length"),
        (b"\x45\x00\x00\x10" + bytes(24), "bad-length"),  # total length < header
        (b"\x45\x00\x00\x80" + bytes(22), "truncated"),  # fewer than 8 payload bytes
        (b"\x46\x00\x00\x80" + bytes(27), "truncated"),  # options eat the 8 bytes
    ],
    ids=["empty", "short-header", "version", "ihl", "total-len", "no-ports", "options"],
)
def test_malformed_quotes(quote: bytes, reason: str) -> None:
    buf = bytearray(8 + len(quote))
    buf[0] = TYPE_DST_UNREACHABLE
    buf[8:] = quote
    Icmpv4Packet(buf).fill_checksum()
    with pytest.raises(WireError) as info:
        Icmpv4Repr.parse(buf)
    assert info.value.reason == reason


@PROPS
@given(echo_reprs, st.integers(0, 8))
def test_echo_round_trip(repr_: Icmpv4Repr, offset: int) -> None:
    buf = bytearray(offset + repr_.buffer_len())
    assert repr_.emit(buf, offset) == repr_.buffer_len()
    assert Icmpv4Repr.parse(memoryview(buf)[offset:]) == repr_


@PROPS
@given(st.integers(0, 255), st.binary(max_size=600), st.integers(0, 0xFFFF))
def test_dst_unreachable_round_trip(code: int, tail: bytes, mtu: int) -> None:
    quote = offending_datagram(0)[:28] + tail
    repr_ = Icmpv4Repr.dst_unreachable(code, quote, mtu)
    buf = bytearray(repr_.buffer_len())
    repr_.emit(buf)
    assert Icmpv4Repr.parse(buf) == repr_


def test_unused_word_is_zero_unless_frag_needed() -> None:
    repr_ = Icmpv4Repr.dst_unreachable(UNREACH_PORT, offending_datagram(), next_hop_mtu=1400)
    assert repr_.next_hop_mtu == 0
    repr_.next_hop_mtu = 1400  # set anyway: still not emitted for a port unreachable
    buf = bytearray(repr_.buffer_len())
    repr_.emit(buf)
    assert buf[4:8] == bytes(4)

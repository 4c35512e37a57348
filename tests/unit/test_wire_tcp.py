"""TCP codec: hand-computed checksum, options (valid, unknown, malformed), zero copy."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire.addr import ipv4
from guest.stack.wire.errors import WireError
from guest.stack.wire.tcp import TcpFlags, TcpPacket, TcpRepr

from .test_wire_checksum import ref_checksum, ref_pseudo_header

PROPS = settings(max_examples=300, deadline=None)

SRC, DST = ipv4("10.0.0.1"), ipv4("10.0.0.2")
# SYN 12345 -> 80, seq 1, window 65535, no options. By hand: pseudo-header
# 0a00+0001+0a00+0002+0006+0014 = 141d; header 3039+0050+0001+5002+ffff = 1808b;
# 141d + 1808b = 194a8 -> 94a8 + 1 = 94a9; checksum = ~94a9 = 6b56.
SYN = bytes.fromhex("3039 0050 00000001 00000000 5002 ffff 6b56 0000".replace(" ", ""))

# A Linux-style SYN's options: MSS 1460, SACK-permitted, timestamps (10, 0), NOP, WS 7.
LINUX_SYN_OPTIONS = bytes.fromhex("020405b4 0402 080a 0000000a 00000000 01 030307".replace(" ", ""))

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addrs = u32


def _fits(repr_: TcpRepr) -> bool:
    try:
        repr_.header_len()
    except WireError:
        return False
    return True


tcp_reprs = st.builds(
    TcpRepr,
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 255).map(TcpFlags),
    window=u16,
    mss=st.none() | u16,
    window_scale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
    timestamp=st.none() | st.tuples(u32, u32),
    payload=st.binary(max_size=300),
    urgent=u16,
).filter(_fits)


def ref_tcp_checksum(src: int, dst: int, segment: bytes) -> int:
    zeroed = segment[:16] + b"\0\0" + segment[18:]
    return ref_checksum(ref_pseudo_header(src, dst, 6, len(segment)) + zeroed)


def segment_with_options(
    options: bytes, payload: bytes = b"", pad_front: bool = False
) -> bytearray:
    """A segment whose data offset covers `options`, padded to 4 bytes with trailing EOLs or,
    with `pad_front`, leading NOPs (so that the last option byte is the header's last byte)."""
    if pad_front:
        options = b"\x01" * (-len(options) % 4) + options
    options += bytes(-len(options) % 4)
    header_len = 20 + len(options)
    buf = bytearray(SYN[:20] + options + payload)
    buf[12] = (header_len // 4) << 4
    TcpPacket(buf).fill_checksum(SRC, DST)
    return buf


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_hand_computed_syn(kind: type) -> None:
    assert ref_tcp_checksum(SRC, DST, SYN) == 0x6B56
    repr_ = TcpRepr.parse(kind(SYN), SRC, DST)
    assert repr_ == TcpRepr(12345, 80, 1, 0, TcpFlags.SYN, 65535)
    assert repr_.segment_len() == 1
    packet = TcpPacket.new_checked(kind(SYN))
    assert (packet.src_port, packet.dst_port, packet.seq_number, packet.ack_number) == (
        12345,
        80,
        1,
        0,
    )
    assert (packet.header_len, packet.flags, packet.window_len) == (20, TcpFlags.SYN, 65535)
    assert (packet.checksum, packet.urgent_at) == (0x6B56, 0)
    assert packet.verify_checksum(SRC, DST)


def test_emit_hand_computed_syn() -> None:
    buf = bytearray(20)
    repr_ = TcpRepr(12345, 80, 1, 0, TcpFlags.SYN, 65535)
    assert (repr_.header_len(), repr_.buffer_len()) == (20, 20)
    assert repr_.emit(buf, 0, SRC, DST) == 20
    assert bytes(buf) == SYN


def test_linux_syn_options() -> None:
    repr_ = TcpRepr.parse(segment_with_options(LINUX_SYN_OPTIONS), SRC, DST)
    assert repr_.mss == 1460
    assert repr_.sack_permitted
    assert repr_.timestamp == (10, 0)
    assert repr_.window_scale == 7
    assert repr_.sack_blocks == ()


def test_emitted_option_layout_is_aligned() -> None:
    repr_ = TcpRepr(1, 2, 3, 4, TcpFlags.SYN, 5, mss=1460, window_scale=7, sack_permitted=True)
    repr_.timestamp = (10, 0)
    buf = bytearray(repr_.buffer_len())
    repr_.emit(buf, 0, SRC, DST)
    assert bytes(buf[20:]) == bytes.fromhex(
        "020405b4 01030307 0402080a 0000000a 00000000".replace(" ", "")
    )


def test_sack_blocks() -> None:
    options = b"\x01\x01\x05\x12" + struct.pack("!4I", 100, 200, 300, 400)
    repr_ = TcpRepr.parse(segment_with_options(options), SRC, DST)
    assert repr_.sack_blocks == ((100, 200), (300, 400))


def test_unknown_options_are_skipped_and_eol_stops() -> None:
    options = b"\x1e\x06abcd" + b"\x02\x04\x05\xb4" + b"\x00" + b"\x02\x04\xff\xff"
    repr_ = TcpRepr.parse(segment_with_options(options), SRC, DST)
    assert repr_.mss == 1460  # the MSS after EOL is never read


def test_window_scale_is_clamped() -> None:
    repr_ = TcpRepr.parse(segment_with_options(b"\x03\x03\x0f"), SRC, DST)
    assert repr_.window_scale == 14


@pytest.mark.parametrize(
    "options",
    [
        b"\x02",  # kind followed by EOL padding: length 0
        b"\x01\x01\x01\x1e",  # kind in the header's very last byte, no length byte
        b"\x1e\x00",  # length 0
        b"\x1e\x01",  # length 1
        b"\x1e\x09abc",  # runs past the (EOL-padded, 8-byte) options
        b"\x02\x03\x05",  # MSS of length 3
        b"\x03\x04\x07\x00",  # window scale of length 4
        b"\x04\x03\x00",  # SACK-permitted of length 3
        b"\x05\x02",  # SACK without blocks
        b"\x05\x09" + bytes(7),  # SACK not a multiple of 8
        b"\x08\x09" + bytes(7),  # timestamps of length 9
    ],
)
def test_malformed_options(options: bytes) -> None:
    # EOL padding follows, so an option is "malformed" only because of its own bytes.
    buf = segment_with_options(options)
    with pytest.raises(WireError) as info:
        TcpRepr.parse(buf, SRC, DST)
    assert info.value.reason == "bad-option"


def test_length_rules() -> None:
    for data, reason in [
        (SYN[:19], "truncated"),
        (SYN[:12] + b"\x40" + SYN[13:], "bad-length"),  # data offset 4
        (SYN[:12] + b"\x60" + SYN[13:], "truncated"),  # data offset 6 in 20 bytes
    ]:
        with pytest.raises(WireError) as info:
            TcpRepr.parse(data, SRC, DST, verify_checksum=False)
        assert info.value.reason == reason
    with pytest.raises(WireError) as info:
        TcpPacket.new_checked(SYN[:19])


def test_bad_checksum() -> None:
    with pytest.raises(WireError) as info:
        TcpRepr.parse(SYN, SRC, DST + 1)
    assert info.value.reason == "bad-checksum"
    assert TcpRepr.parse(SYN, SRC, DST + 1, verify_checksum=False).seq == 1


def test_payload_is_zero_copy_view() -> None:
    buf = bytearray(segment_with_options(b"\x01\x01\x08\x0a" + bytes(8), b"hello world"))
    repr_ = TcpRepr.parse(memoryview(buf), SRC, DST)
    assert isinstance(repr_.payload, memoryview)
    assert repr_.payload.obj is buf
    assert bytes(repr_.payload) == b"hello world"
    buf[-5:] = b"WORLD"
    assert bytes(repr_.payload) == b"hello WORLD"


def test_emit_header_in_place_equals_emit() -> None:
    repr_ = TcpRepr(1, 2, 3, 4, TcpFlags.ACK, 5, timestamp=(6, 7), payload=b"payload!")
    copied = bytearray(repr_.buffer_len())
    repr_.emit(copied, 0, SRC, DST)
    in_place = bytearray(repr_.buffer_len())
    in_place[repr_.header_len() :] = b"payload!"
    assert repr_.emit_header(in_place, 0, SRC, DST, 8) == repr_.header_len()
    assert in_place == copied


def test_emit_errors() -> None:
    too_many = TcpRepr(1, 2, 3, 4, TcpFlags.ACK, 5, timestamp=(1, 2))
    too_many.sack_blocks = ((1, 2), (3, 4), (5, 6), (7, 8))
    with pytest.raises(WireError) as info:
        too_many.emit(bytearray(100), 0, SRC, DST)
    assert info.value.reason == "bad-option"
    with pytest.raises(WireError) as info:
        TcpRepr(1, 2, 3, 4, TcpFlags.SYN, 5, window_scale=15).emit(bytearray(40), 0, SRC, DST)
    assert info.value.reason == "bad-field"
    with pytest.raises(WireError) as info:
        TcpRepr(1, 2, 3, 4, TcpFlags.SYN, 0x10000).emit(bytearray(40), 0, SRC, DST)
    assert info.value.reason == "bad-field"
    with pytest.raises(WireError) as info:
        TcpRepr(1, 2, 3, 4, TcpFlags.SYN, 5).emit(bytearray(19), 0, SRC, DST)
    assert info.value.reason == "no-room"


def test_sequence_numbers_wrap_on_emit() -> None:
    buf = bytearray(20)
    TcpRepr(1, 2, 2**32 + 5, -1, TcpFlags.ACK, 5).emit(buf, 0, SRC, DST)
    repr_ = TcpRepr.parse(buf, SRC, DST)
    assert (repr_.seq, repr_.ack) == (5, 0xFFFFFFFF)


@PROPS
@given(tcp_reprs, addrs, addrs, st.integers(0, 9))
def test_round_trip_and_reference_checksum(repr_: TcpRepr, src: int, dst: int, off: int) -> None:
    buf = bytearray(off + repr_.buffer_len())
    assert repr_.emit(buf, off, src, dst) == repr_.buffer_len()
    segment = bytes(buf[off:])
    assert TcpRepr.parse(segment, src, dst) == repr_
    assert struct.unpack_from("!H", segment, 16)[0] == ref_tcp_checksum(src, dst, segment)


# Option encodings, well-formed ones first; `garbage` makes the sequence malformed.
well_formed_options = st.one_of(
    st.just(b"\x01"),
    st.builds(lambda v: b"\x02\x04" + v.to_bytes(2, "big"), u16),
    st.builds(lambda v: bytes([3, 3, v]), st.integers(0, 255)),
    st.just(b"\x04\x02"),
    st.builds(
        lambda blocks: (
            bytes([5, 2 + 8 * len(blocks)]) + struct.pack(f"!{2 * len(blocks)}I", *sum(blocks, ()))
        ),
        st.lists(st.tuples(u32, u32), min_size=1, max_size=4),
    ),
    st.builds(lambda a, b: b"\x08\x0a" + struct.pack("!II", a, b), u32, u32),
    st.builds(
        lambda k, body: bytes([k, len(body) + 2]) + body, st.integers(9, 255), st.binary(max_size=6)
    ),
)
garbage = st.just(b"\x00") | st.binary(min_size=1, max_size=3)


@PROPS
@given(st.lists(well_formed_options, max_size=8).map(b"".join), st.booleans())
def test_well_formed_options_always_parse(options: bytes, pad_front: bool) -> None:
    if len(options) > 40:
        options = b""
    TcpRepr.parse(segment_with_options(options, b"data", pad_front), SRC, DST)


@PROPS
@given(
    st.lists(well_formed_options | garbage, max_size=8).map(b"".join) | st.binary(max_size=40),
    st.binary(max_size=64),
    st.booleans(),
)
def test_arbitrary_options_parse_or_bad_option(
    options: bytes, payload: bytes, pad_front: bool
) -> None:
    buf = segment_with_options(options[:40], payload, pad_front)
    try:
        repr_ = TcpRepr.parse(buf, SRC, DST)
    except WireError as exc:
        assert exc.reason == "bad-option"
    else:
        assert bytes(repr_.payload) == payload
        assert repr_.window_scale is None or 0 <= repr_.window_scale <= 14
        assert len(repr_.sack_blocks) <= 4

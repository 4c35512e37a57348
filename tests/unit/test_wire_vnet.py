"""virtio_net_hdr codec: known bytes, round trips, the transmit sanity check, checksum seeds."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire import vnet
from guest.stack.wire.addr import ipv4
from guest.stack.wire.checksum import ones_sum
from guest.stack.wire.tcp import TcpFlags, TcpPacket, TcpRepr
from guest.stack.wire.vnet import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    HEADER_LEN,
    TCP_CSUM_OFFSET,
    UDP_CSUM_OFFSET,
    VnetHdr,
    csum_offload,
    partial_csum_seed,
    tcp4_tso,
)

PROPS = settings(max_examples=300, deadline=None)
u16 = st.integers(0, 0xFFFF)
headers = st.builds(VnetHdr, st.integers(0, 0xFF), st.integers(0, 0xFF), u16, u16, u16, u16)


@pytest.mark.skipif(sys.byteorder != "little", reason="known bytes are little-endian")
def test_known_bytes_little_endian() -> None:
    # What the kernel writes for a GRO'd IPv4/TCP segment: NEEDS_CSUM, TCPV4, hdr_len 66,
    # gso_size 1448, csum_start 34, csum_offset 16 (u16 fields little-endian, as vio_le()).
    raw = bytes.fromhex("01 01 4200 a805 2200 1000".replace(" ", ""))
    hdr = VnetHdr.parse(raw)
    assert hdr == VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16)
    assert hdr.to_bytes() == raw
    assert hdr.needs_csum and hdr.is_gso and not hdr.data_valid


def test_zero_header_is_plain_frame() -> None:
    assert VnetHdr.parse(bytes(HEADER_LEN)) == VnetHdr() == vnet.PLAIN
    assert bytes(HEADER_LEN) == vnet.PLAIN_BYTES
    assert not vnet.PLAIN.is_gso and not vnet.PLAIN.needs_csum


def test_native_byte_order() -> None:
    hdr = VnetHdr(F_DATA_VALID, GSO_NONE, 0x0102, 0x0304, 0x0506, 0x0708)
    assert hdr.to_bytes() == struct.pack("=BBHHHH", 2, 0, 0x0102, 0x0304, 0x0506, 0x0708)
    assert hdr.data_valid


@PROPS
@given(headers, st.integers(0, 8))
def test_round_trip_at_offset(hdr: VnetHdr, offset: int) -> None:
    buf = bytearray(offset + HEADER_LEN + 3)
    assert hdr.emit(buf, offset) == HEADER_LEN
    assert VnetHdr.parse(buf, offset) == hdr
    assert VnetHdr.parse(memoryview(bytes(buf)), offset) == hdr


@PROPS
@given(st.binary(max_size=HEADER_LEN - 1))
def test_short_buffer_is_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        VnetHdr.parse(data)


def test_emit_errors() -> None:
    with pytest.raises(ValueError):
        VnetHdr().emit(bytearray(9))
    with pytest.raises(ValueError):
        VnetHdr().emit(bytearray(20), -1)
    with pytest.raises(ValueError):
        VnetHdr(gso_size=0x10000).emit(bytearray(10))
    with pytest.raises(ValueError):
        VnetHdr(flags=256).to_bytes()


def test_tcp4_tso_fields() -> None:
    hdr = tcp4_tso(14, 20, 32, 1448)
    assert hdr == VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, TCP_CSUM_OFFSET)
    assert tcp4_tso(14, 20, 20, 1460, ecn=True).gso_type == GSO_TCPV4 | GSO_ECN
    hdr.check(66 + 3 * 1448)


def test_csum_offload_fields() -> None:
    udp = csum_offload(14, 20, UDP_CSUM_OFFSET)
    assert (udp.flags, udp.gso_type, udp.csum_start, udp.csum_offset) == (F_NEEDS_CSUM, 0, 34, 6)
    assert udp.hdr_len == 34 + 6 + 2
    udp.check(42)
    with pytest.raises(ValueError, match="beyond"):
        csum_offload(14, 20, TCP_CSUM_OFFSET).check(40)


@pytest.mark.parametrize(
    ("hdr", "frame_len", "match"),
    [
        (VnetHdr(flags=8), 100, "flags"),
        (VnetHdr(gso_type=2), 100, "gso_type"),
        (VnetHdr(gso_type=GSO_TCPV4, gso_size=1000), 100, "NEEDS_CSUM"),
        (VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16), 100, "gso_size"),
        (VnetHdr(hdr_len=101), 100, "hdr_len"),
        (VnetHdr(F_NEEDS_CSUM, csum_start=90, csum_offset=16), 100, "beyond"),
    ],
)
def test_check_rejects(hdr: VnetHdr, frame_len: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hdr.check(frame_len)


@PROPS
@given(st.binary(max_size=3000), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_seed_plus_offloaded_sum_is_the_real_checksum(payload: bytes, src: int, dst: int) -> None:
    """Doing what the NIC does with a NEEDS_CSUM frame (sum from csum_start with the seed in
    the field, store the complement) gives exactly the checksum software would compute."""
    tcp = TcpRepr(1234, 80, 1, 2, TcpFlags.ACK, 100, timestamp=(5, 6), payload=payload)
    right = bytearray(tcp.buffer_len())
    tcp.emit(right, 0, src, dst)
    offloaded = bytearray(right)
    seed = partial_csum_seed(src, dst, 6, len(offloaded))
    struct.pack_into("!H", offloaded, 16, seed)
    struct.pack_into("!H", offloaded, 16, ~ones_sum(offloaded) & 0xFFFF)
    assert TcpPacket(offloaded).checksum == TcpPacket(right).checksum
    assert TcpPacket(offloaded).verify_checksum(src, dst)


def test_seed_known_value() -> None:
    # 198.18.0.1 -> 198.18.0.2, TCP, 40 bytes: c612+0001+c612+0002+0006+0028 = 0x18c55 -> 0x8c56.
    assert partial_csum_seed(ipv4("198.18.0.1"), ipv4("198.18.0.2"), 6, 40) == 0x8C56

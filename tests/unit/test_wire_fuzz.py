"""Robustness: any bytes into any parser yield a repr or `WireError`, never another exception.

Two sources of input: arbitrary bytes, and valid frames mutated (bytes flipped, truncated,
extended) so that the fuzzing reaches deep into the parsers instead of dying at the first
length check. Frames are decoded by a receive pipeline shaped like the stack's, with and
without checksum verification (flipped bytes would otherwise stop almost everything at the
checksum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest.stack.wire.arp import ArpPacket, ArpRepr
from guest.stack.wire.errors import REASONS, WireError
from guest.stack.wire.ethernet import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EthernetFrame,
    EthernetRepr,
)
from guest.stack.wire.frame import emit_tcp_frame, emit_udp_frame, tcp_payload_offset
from guest.stack.wire.icmp import Icmpv4Packet, Icmpv4Repr, QuotedDatagram
from guest.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, Ipv4Repr
from guest.stack.wire.ipv4_frag import Ipv4Reassembler
from guest.stack.wire.tcp import TcpPacket, TcpRepr
from guest.stack.wire.udp import UdpPacket, UdpRepr

from .test_wire_arp import arp_reprs
from .test_wire_ethernet import ethernet_reprs
from .test_wire_icmp import echo_reprs, offending_datagram
from .test_wire_ipv4 import ipv4_reprs
from .test_wire_tcp import tcp_reprs
from .test_wire_udp import udp_reprs

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SRC, DST = 0x0A000001, 0x0A000002
KINDS = st.sampled_from([bytes, bytearray, memoryview])

PARSERS: dict[str, Callable[[object], object]] = {
    "ethernet": EthernetRepr.parse,
    "arp": ArpRepr.parse,
    "ipv4": Ipv4Repr.parse,
    "ipv4-noverify": lambda b: Ipv4Repr.parse(b, verify_checksum=False),
    "icmp": Icmpv4Repr.parse,
    "icmp-noverify": lambda b: Icmpv4Repr.parse(b, verify_checksum=False),
    "icmp-quote": lambda b: QuotedDatagram.parse(memoryview(b)),
    "udp": lambda b: UdpRepr.parse(b, SRC, DST),
    "udp-noverify": lambda b: UdpRepr.parse(b, SRC, DST, verify_checksum=False),
    "tcp": lambda b: TcpRepr.parse(b, SRC, DST),
    "tcp-noverify": lambda b: TcpRepr.parse(b, SRC, DST, verify_checksum=False),
}

# Every property of each view class must be readable once new_checked() has accepted a buffer.
VIEWS = {
    EthernetFrame: ["dst_addr", "src_addr", "ethertype", "payload"],
    ArpPacket: ["hardware_type", "protocol_type", "hardware_len", "protocol_len", "operation"],
    Ipv4Packet: [
        "version",
        "header_len",
        "dscp",
        "ecn",
        "total_len",
        "ident",
        "dont_frag",
        "more_frags",
        "frag_offset",
        "ttl",
        "protocol",
        "checksum",
        "src_addr",
        "dst_addr",
        "options",
        "payload",
    ],
    Icmpv4Packet: ["msg_type", "code", "checksum", "ident", "seq_no", "next_hop_mtu", "data"],
    UdpPacket: ["src_port", "dst_port", "length", "checksum", "payload"],
    TcpPacket: [
        "src_port",
        "dst_port",
        "seq_number",
        "ack_number",
        "header_len",
        "flags",
        "window_len",
        "checksum",
        "urgent_at",
        "options",
        "payload",
    ],
}


def expect_repr_or_wire_error(parse: Callable[[object], object], data: object) -> object:
    try:
        return parse(data)
    except WireError as exc:
        assert exc.reason in REASONS
        return None


@pytest.mark.parametrize("name", sorted(PARSERS))
@FUZZ
@given(data=st.binary(max_size=200), kind=KINDS)
def test_arbitrary_bytes_into_every_parser(name: str, data: bytes, kind: type) -> None:
    expect_repr_or_wire_error(PARSERS[name], kind(data))


@pytest.mark.parametrize("view", list(VIEWS), ids=lambda v: v.__name__)
@FUZZ
@given(data=st.binary(max_size=120), kind=KINDS)
def test_checked_views_are_safe_to_read(view: type, data: bytes, kind: type) -> None:
    try:
        packet = view.new_checked(kind(data))
    except WireError:
        return
    for prop in VIEWS[view]:
        getattr(packet, prop)


# -- valid frames, then mutations ---------------------------------------------------------


def build_tcp(tcp: TcpRepr, ip: Ipv4Repr, eth: EthernetRepr) -> bytes:
    start = tcp_payload_offset(tcp)
    buf = bytearray(start + len(tcp.payload))
    buf[start:] = tcp.payload
    eth.ethertype = ETHERTYPE_IPV4
    emit_tcp_frame(buf, eth, ip, tcp, len(tcp.payload))
    return bytes(buf)


def build_udp(udp: UdpRepr, ip: Ipv4Repr, eth: EthernetRepr) -> bytes:
    buf = bytearray(42 + len(udp.payload))
    buf[42:] = udp.payload
    eth.ethertype = ETHERTYPE_IPV4
    emit_udp_frame(buf, eth, ip, udp, len(udp.payload))
    return bytes(buf)


def build_icmp(icmp: Icmpv4Repr, ip: Ipv4Repr, eth: EthernetRepr) -> bytes:
    buf = bytearray(34 + icmp.buffer_len())
    eth.ethertype = ETHERTYPE_IPV4
    eth.emit(buf)
    ip.protocol, ip.payload_len = PROTO_ICMP, icmp.buffer_len()
    ip.emit(buf, 14)
    icmp.emit(buf, 34)
    return bytes(buf)


def build_arp(arp: ArpRepr, eth: EthernetRepr) -> bytes:
    buf = bytearray(42)
    eth.ethertype = ETHERTYPE_ARP
    eth.emit(buf)
    arp.emit(buf, 14)
    return bytes(buf)


unreachables = st.builds(
    lambda code, n: Icmpv4Repr.dst_unreachable(code, offending_datagram(n)),
    st.integers(0, 15),
    st.integers(0, 100),
)
# Unfragmented packets, so that valid frames decode to the top (mutations may still make
# fragments, which then exercise the reassembler).
whole_ipv4_reprs = ipv4_reprs.map(lambda ip: replace(ip, more_frags=False, frag_offset=0))
# (frame, the repr type it decodes to)
frames = st.one_of(
    st.tuples(st.builds(build_tcp, tcp_reprs, whole_ipv4_reprs, ethernet_reprs), st.just(TcpRepr)),
    st.tuples(st.builds(build_udp, udp_reprs, whole_ipv4_reprs, ethernet_reprs), st.just(UdpRepr)),
    st.tuples(
        st.builds(build_icmp, echo_reprs | unreachables, whole_ipv4_reprs, ethernet_reprs),
        st.just(Icmpv4Repr),
    ),
    st.tuples(st.builds(build_arp, arp_reprs, ethernet_reprs), st.just(ArpRepr)),
)

mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2000), st.integers(1, 255)),
        st.tuples(st.just("truncate"), st.integers(0, 2000)),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("set"), st.integers(0, 80), st.integers(0, 255)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(frame: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(frame)
    for op in ops:
        if op[0] == "flip" and buf:
            buf[op[1] % len(buf)] ^= op[2]
        elif op[0] == "set" and op[1] < len(buf):
            buf[op[1]] = op[2]  # aimed at header fields: lengths, IHL, data offset, options
        elif op[0] == "truncate":
            del buf[op[1] % (len(buf) + 1) :]
        elif op[0] == "extend":
            buf += op[1]
    return bytes(buf)


def receive(frame: object, verify: bool, reassembler: Ipv4Reassembler) -> object:
    """A receive path shaped like the stack's: demultiplex and decode to the top."""
    eth = EthernetRepr.parse(frame)
    body = EthernetFrame(frame).payload  # type: ignore[arg-type]
    if eth.ethertype == ETHERTYPE_ARP:
        return ArpRepr.parse(body)
    if eth.ethertype != ETHERTYPE_IPV4:
        return eth
    packet = Ipv4Packet(body)
    ip = Ipv4Repr.parse(packet, verify)
    datagram = reassembler.push(ip, packet.payload, now=0.0)
    if datagram is None:
        return ip
    ip, payload = datagram
    if ip.protocol == PROTO_TCP:
        return TcpRepr.parse(payload, ip.src_addr, ip.dst_addr, verify)
    if ip.protocol == PROTO_UDP:
        return UdpRepr.parse(payload, ip.src_addr, ip.dst_addr, verify)
    if ip.protocol == PROTO_ICMP:
        return Icmpv4Repr.parse(payload, verify)
    return ip


@FUZZ
@given(case=frames, kind=KINDS)
def test_valid_frames_decode_to_the_top(case: tuple[bytes, type], kind: type) -> None:
    frame, expected = case
    assert isinstance(receive(kind(frame), True, Ipv4Reassembler()), expected)


@FUZZ
@given(case=frames, ops=mutations, verify=st.booleans(), kind=KINDS)
def test_mutated_frames_decode_or_wire_error(
    case: tuple[bytes, type], ops: list[tuple], verify: bool, kind: type
) -> None:
    reassembler = Ipv4Reassembler()
    frame = kind(mutate(case[0], ops))
    expect_repr_or_wire_error(lambda f: receive(f, verify, reassembler), frame)

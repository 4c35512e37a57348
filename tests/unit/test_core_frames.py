"""One NetStack against hand-built frames: what it answers, what it ignores, what it counts."""

from __future__ import annotations

import pytest

from guest.stack.core import Accepted, NetStack, Readable
from guest.stack.wire.addr import MAC_BROADCAST, MAC_ZERO, ipv4
from guest.stack.wire.arp import OP_REPLY, OP_REQUEST, ArpRepr
from guest.stack.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.icmp import (
    TYPE_DST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    UNREACH_PROTOCOL,
    Icmpv4Repr,
)
from guest.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, Ipv4Repr
from guest.stack.wire.ipv4_frag import Ipv4Reassembler
from guest.stack.wire.tcp import TcpFlags, TcpRepr
from guest.stack.wire.udp import UdpRepr

US_MAC = bytes.fromhex("525400aa0001")
US = ipv4("198.18.1.1")
PEER_MAC = bytes.fromhex("525400bb0002")
PEER = ipv4("198.18.1.2")


@pytest.fixture
def st() -> NetStack:
    return NetStack(US_MAC, "198.18.1.1/24", secret=b"frames", strict=True)


def eth(payload: bytes | bytearray, ethertype: int = ETHERTYPE_IPV4, dst: bytes = US_MAC) -> bytes:
    head = bytearray(14)
    EthernetRepr(PEER_MAC, dst, ethertype).emit(head, 0)
    return bytes(head) + bytes(payload)


def ip_packet(proto: int, payload: bytes, src: int = PEER, dst: int = US, **kw: object) -> bytes:
    head = bytearray(20)
    Ipv4Repr(src, dst, proto, len(payload), **kw).emit(head, 0)  # type: ignore[arg-type]
    return bytes(head) + payload


def icmp_msg(msg: Icmpv4Repr) -> bytes:
    buf = bytearray(msg.buffer_len())
    msg.emit(buf, 0)
    return bytes(buf)


def tcp_seg(seg: TcpRepr, src: int = PEER, dst: int = US) -> bytes:
    buf = bytearray(seg.buffer_len())
    seg.emit(buf, 0, src, dst)
    return bytes(buf)


def udp_dgram(sport: int, dport: int, data: bytes, src: int = PEER, dst: int = US) -> bytes:
    buf = bytearray(8 + len(data))
    UdpRepr(sport, dport, data).emit(buf, 0, src, dst)
    return bytes(buf)


def arp(op: int, tpa: int, dst: bytes = MAC_BROADCAST, spa: int = PEER) -> bytes:
    buf = bytearray(28)
    ArpRepr(op, PEER_MAC, spa, MAC_ZERO, tpa).emit(buf, 0)
    return eth(buf, ETHERTYPE_ARP, dst)


def introduce(st: NetStack) -> None:
    """The peer asks for our MAC, so we learn its own (no ARP round trip in later tests)."""
    st.receive_frame(arp(OP_REQUEST, US), 0.0)
    st.poll(0.0)


def test_arp_request_for_our_address_is_answered(st: NetStack) -> None:
    st.receive_frame(arp(OP_REQUEST, US), 1.0)
    out = st.poll(1.0)
    assert len(out) == 1
    frame = out[0]
    e = EthernetRepr.parse(frame)
    assert (e.dst_addr, e.src_addr, e.ethertype) == (PEER_MAC, US_MAC, ETHERTYPE_ARP)
    reply = ArpRepr.parse(memoryview(frame)[14:])
    assert reply == ArpRepr(OP_REPLY, US_MAC, US, PEER_MAC, PEER)
    assert st.arp_table() == {"198.18.1.2": PEER_MAC.hex(":")}
    assert st.counters.arp_replies_out == 1


def test_arp_for_someone_else_is_ignored(st: NetStack) -> None:
    st.receive_frame(arp(OP_REQUEST, ipv4("198.18.1.3")), 1.0)
    assert st.poll(1.0) == []
    assert st.arp_table() == {}  # not addressed to us, sender unknown: RFC 826 learns nothing
    assert st.counters.drops == {"arp:not-for-us": 1}


def test_arp_claiming_our_address_is_a_conflict(st: NetStack) -> None:
    st.receive_frame(arp(OP_REPLY, US, US_MAC, spa=US), 1.0)
    assert st.poll(1.0) == []
    assert st.counters.drops == {"arp:address-conflict": 1}


def test_frames_for_other_macs_and_addresses_are_ignored_and_counted(st: NetStack) -> None:
    introduce(st)
    echo = icmp_msg(Icmpv4Repr(TYPE_ECHO_REQUEST, 0, 1, 1, b"ping"))
    st.receive_frame(eth(ip_packet(PROTO_ICMP, echo), dst=PEER_MAC), 1.0)  # other MAC
    st.receive_frame(eth(ip_packet(PROTO_ICMP, echo), dst=b"\x01\x00\x5e\x00\x00\x01"), 1.0)
    st.receive_frame(eth(ip_packet(PROTO_ICMP, echo, dst=ipv4("198.18.1.9"))), 1.0)
    st.receive_frame(eth(ip_packet(PROTO_ICMP, echo, dst=ipv4("198.18.1.255"))), 1.0)
    st.receive_frame(eth(ip_packet(PROTO_ICMP, echo, src=US)), 1.0)  # martian source
    st.receive_frame(eth(b"\x60" + bytes(60), 0x86DD), 1.0)  # IPv6
    assert st.poll(1.0) == []
    assert st.counters.drops == {
        "eth:not-for-us": 2,
        "ipv4:not-for-us": 1,
        "icmp:echo-to-broadcast": 1,
        "ipv4:bad-source": 1,
        "eth:ethertype": 1,
    }
    assert st.counters.frames_in == 7


def test_malformed_frames_are_counted_by_layer_and_reason(st: NetStack) -> None:
    introduce(st)
    good = bytearray(eth(ip_packet(PROTO_UDP, udp_dgram(1, 2, b"data"))))
    bad_ip = bytearray(good)
    bad_ip[14 + 8] ^= 0xFF  # TTL changed, header checksum now wrong
    bad_udp = bytearray(good)
    bad_udp[-1] ^= 0xFF
    st.receive_frame(b"\x00" * 5, 1.0)
    st.receive_frame(good[:30], 1.0)
    st.receive_frame(bad_ip, 1.0)
    st.receive_frame(bad_udp, 1.0)
    seg = bytearray(eth(ip_packet(PROTO_TCP, tcp_seg(TcpRepr(1, 80, 0, 0, TcpFlags.SYN, 0)))))
    seg[-1] ^= 1  # checksum
    st.receive_frame(seg, 1.0)
    assert st.counters.drops == {
        "eth:truncated": 1,
        "ipv4:truncated": 1,
        "ipv4:bad-checksum": 1,
        "udp:bad-checksum": 1,
        "tcp:bad-checksum": 1,
    }
    # With receive checksum offload the device vouches for the bytes: nothing is verified.
    st.receive_frame(bad_udp, 1.0, checksum_ok=True)
    assert st.counters.udp_no_port == 1


def test_fragmented_echo_is_reassembled_and_answered(st: NetStack) -> None:
    introduce(st)
    data = bytes(range(256)) * 16  # 4096 bytes
    echo = icmp_msg(Icmpv4Repr(TYPE_ECHO_REQUEST, 0, 0x1234, 7, data))
    pieces = [(0, echo[:1480]), (1480, echo[1480:2960]), (2960, echo[2960:])]
    for offset, piece in reversed(pieces):  # arrival order must not matter
        more = offset + len(piece) < len(echo)
        packet = ip_packet(PROTO_ICMP, piece, ident=99, more_frags=more, frag_offset=offset)
        st.receive_frame(eth(packet), 2.0)
    out = st.poll(2.0)
    assert st.counters.ip_frags_in == 3 and st.counters.ip_reassembled == 1
    assert len(out) == 3  # the reply does not fit the MTU either
    reasm = Ipv4Reassembler()
    whole = None
    for frame in out:
        assert len(frame) <= 1514 and frame[0:6] == PEER_MAC
        packet = Ipv4Packet(memoryview(frame)[14:])
        whole = reasm.push(Ipv4Repr.parse(packet), packet.payload, 2.0) or whole
    assert whole is not None and whole.ip.dst_addr == PEER
    reply = Icmpv4Repr.parse(whole.payload)
    assert (reply.msg_type, reply.ident, reply.seq_no) == (TYPE_ECHO_REPLY, 0x1234, 7)
    assert bytes(reply.data) == data


def test_unknown_protocol_gets_protocol_unreachable(st: NetStack) -> None:
    introduce(st)
    st.receive_frame(eth(ip_packet(47, b"GRE?" * 4)), 1.0)
    (frame,) = st.poll(1.0)
    packet = Ipv4Packet(memoryview(frame)[14:])
    msg = Icmpv4Repr.parse(packet.payload)
    assert (msg.msg_type, msg.code) == (TYPE_DST_UNREACHABLE, UNREACH_PROTOCOL)
    assert msg.quoted is not None and msg.quoted.header.protocol == 47
    assert st.counters.drops == {"ipv4:protocol": 1}
    st.receive_frame(eth(ip_packet(47, b"x")), 1.0)  # too short to quote: no error sent
    assert st.poll(1.0) == []
    assert st.counters.drops == {"ipv4:protocol": 2}


def test_syn_to_closed_port_gets_rst_ack(st: NetStack) -> None:
    introduce(st)
    syn = TcpRepr(40000, 81, 1000, 0, TcpFlags.SYN, 65535, mss=1460)
    st.receive_frame(eth(ip_packet(PROTO_TCP, tcp_seg(syn))), 1.0)
    (frame,) = st.poll(1.0)
    packet = Ipv4Packet(memoryview(frame)[14:])
    ip = Ipv4Repr.parse(packet)
    assert (ip.src_addr, ip.dst_addr, ip.dont_frag) == (US, PEER, True)
    rst = TcpRepr.parse(packet.payload, ip.src_addr, ip.dst_addr)
    assert (rst.src_port, rst.dst_port, rst.seq, rst.ack) == (81, 40000, 0, 1001)
    assert rst.flags == TcpFlags.RST | TcpFlags.ACK
    # An RST is never answered.
    st.receive_frame(eth(ip_packet(PROTO_TCP, tcp_seg(TcpRepr(1, 81, 0, 0, TcpFlags.RST, 0)))), 1)
    assert st.poll(1.0) == []


def test_gro_sized_segment_is_accepted(st: NetStack) -> None:
    """A segment larger than the MTU (as a device doing GRO delivers it) is just data."""
    introduce(st)
    lh = st.tcp_listen(80)
    syn = TcpRepr(40000, 80, 5000, 0, TcpFlags.SYN, 65535, mss=1460)
    st.receive_frame(eth(ip_packet(PROTO_TCP, tcp_seg(syn))), 1.0)
    (frame,) = st.poll(1.0)
    packet = Ipv4Packet(memoryview(frame)[14:])
    synack = TcpRepr.parse(packet.payload, US, PEER)
    assert synack.flags == TcpFlags.SYN | TcpFlags.ACK and synack.ack == 5001
    ack = TcpRepr(40000, 80, 5001, synack.seq + 1, TcpFlags.ACK, 65535)
    st.receive_frame(eth(ip_packet(PROTO_TCP, tcp_seg(ack))), 1.0)
    data = bytes(range(250)) * 40  # 10000 bytes in one 10054-byte frame
    big = TcpRepr(40000, 80, 5001, synack.seq + 1, TcpFlags.ACK | TcpFlags.PSH, 65535)
    big.payload = data
    frame_in = eth(ip_packet(PROTO_TCP, tcp_seg(big)))
    assert len(frame_in) > 1514 + 8000
    st.receive_frame(frame_in, 1.0)
    out = st.poll(1.0)
    assert Accepted(lh) in st.events()
    h = st.tcp_accept(lh)
    assert h is not None and st.tcp_recv(h) == data
    acks = [TcpRepr.parse(Ipv4Packet(memoryview(f)[14:]).payload, US, PEER) for f in out]
    assert acks and acks[-1].ack == 5001 + len(data)
    st.poll(1.0)
    assert Readable(h) in st.events()


def test_handles_and_errors(st: NetStack) -> None:
    u = st.udp_bind(5353)
    with pytest.raises(OSError):
        st.udp_bind(5353)
    with pytest.raises(OSError):
        st.tcp_send(u, b"x")
    with pytest.raises(OSError):
        st.udp_sendto(u, b"x" * 65508, "198.18.1.2", 1, 0.0)
    lh = st.tcp_listen(80)
    with pytest.raises(OSError):
        st.tcp_listen(80)
    with pytest.raises(OSError):
        st.tcp_accept(u)
    st.tcp_close(lh)
    st.udp_close(u)
    assert st.handles() == []
    with pytest.raises(OSError):
        st.tcp_close(u)

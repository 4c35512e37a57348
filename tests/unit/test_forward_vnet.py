"""The forwarding engine with offloads (`Forwarder.handle_vnet`): frames behind a virtio_net_hdr.

A plain frame behind the all-zero header must fare exactly as `handle` treats it (a differential
run over the engine's own fuzz corpus); GRO super-frames are forwarded whole with their header,
checked against their segments' size on the egress MTU as the kernel checks GSO packets; what
is not a TCP super-frame as GRO makes them is refused; a frame held for ARP keeps its header;
a partial checksum is completed before the frame is cut into fragments.
"""

from __future__ import annotations

import random
import struct

import pytest

from guest.stack.forward import ForwardCounters, Forwarder
from guest.stack.wire.checksum import ones_sum, pseudo_header_sum
from guest.stack.wire.icmp import TYPE_DST_UNREACHABLE, UNREACH_FRAG_NEEDED
from guest.stack.wire.ipv4 import PROTO_TCP, PROTO_UDP, Ipv4Packet, Ipv4Repr
from guest.stack.wire.ipv4_frag import Ipv4Reassembler
from guest.stack.wire.vnet import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    PLAIN_BYTES,
    VnetHdr,
    partial_csum_seed,
)
from tests.unit import test_forward_engine
from tests.unit.test_forward_engine import (
    A_IP,
    B_IP,
    B_MAC,
    FW1_MAC,
    _mutate,
    icmp_of,
    ip_frame,
    is_arp_request_for,
    make,
    reply_to_fw0,
    reply_to_fw1,
)

MSS = 1448


def primed(**kw) -> Forwarder:
    """The engine tests' forwarder with A, B and GW resolved, its counters zero again."""
    fw = test_forward_engine.primed(**kw)
    fw.counters = ForwardCounters()
    return fw


def super_frame(
    segments: int = 10, *, gso: int = MSS, df: bool = True, ttl: int = 64, **hdr: int
) -> bytearray:
    """A TCP super-frame from A to B as GRO hands it up: one IPv4/TCP header, `segments` x `gso`
    payload bytes, the TCP checksum left partial (the pseudo-header seed), and its header."""
    payload = random.Random(segments).randbytes(segments * gso)
    tcp = bytearray(20)
    tcp[12] = 5 << 4  # data offset: 20 bytes
    tcp[13] = 0x18  # PSH, ACK
    struct.pack_into("!H", tcp, 16, partial_csum_seed(A_IP, B_IP, PROTO_TCP, 20 + len(payload)))
    frame = ip_frame(payload=bytes(tcp) + payload, proto=PROTO_TCP, df=df, ttl=ttl)
    fields = {
        "flags": F_NEEDS_CSUM,
        "gso_type": GSO_TCPV4,
        "hdr_len": 54,
        "gso_size": gso,
        "csum_start": 34,
        "csum_offset": 16,
        **hdr,
    }
    return bytearray(VnetHdr(**fields).to_bytes()) + frame


def test_a_plain_frame_fares_as_handle_treats_it() -> None:
    """Differential: the engine's fuzz corpus through `handle` on the full path alone (the
    specification) and, behind the all-zero header, through `handle_vnet` on a twin with its
    fast path: the same frames out (behind the all-zero header), the same counters, every
    time."""
    rng = random.Random(20041009)
    plain, vnet = primed(mtu1=1000, fast_path=False), primed(mtu1=1000)
    seeds = [
        ip_frame(payload=bytes(1200)),
        ip_frame(df=True, payload=bytes(1100)),
        ip_frame(mf=True, payload=bytes(64)),
        ip_frame(src=B_IP, dst=A_IP, eth_dst=FW1_MAC, eth_src=B_MAC),
        ip_frame(dst=0xC612024D),  # 198.18.2.77, unresolved: held for ARP, then given up
        reply_to_fw0(bytes.fromhex("525400000102"), A_IP),
    ]
    for i in range(3000):
        seed = rng.choice(seeds)
        frame = _mutate(rng, seed)
        iface = "eth1" if seed[0:6] == FW1_MAC else "eth0"
        now = i * 0.01
        want = plain.handle(iface, bytearray(frame), now)
        got = vnet.handle_vnet(iface, bytearray(PLAIN_BYTES) + frame, now)
        assert [(n, bytes(f[:10]), bytes(f[10:])) for n, f in got] == [
            (n, PLAIN_BYTES, bytes(f)) for n, f in want
        ], i
    assert vnet.stats() == plain.stats()
    assert vnet.fast_hits > 100 and plain.fast_hits == 0  # it took the unmutated frames
    s = plain.stats()
    assert s["forwarded"] > 500 and s["fragmented"] > 50 and s["queue_drops"] > 0, s


def test_a_super_frame_is_forwarded_whole_in_place_with_its_header() -> None:
    fw = primed()
    frame = super_frame(10, ttl=20)
    header = bytes(frame[:10])
    [(name, sent)] = fw.handle_vnet("eth0", frame, 1.0)
    assert name == "eth1"
    assert isinstance(sent, memoryview) and sent.obj is frame  # rewritten where it lies
    assert bytes(sent[:10]) == header  # TSO cuts it into the same 1448-byte segments again
    assert sent[10:16] == B_MAC and sent[16:22] == FW1_MAC
    ip = Ipv4Repr.parse(sent[24:])  # verifies the updated header checksum
    assert ip.ttl == 19 and ip.payload_len == 20 + 10 * MSS
    s = fw.stats()
    assert (s["forwarded"], s["gso_forwarded"], s["gso_segments"]) == (1, 1, 10)
    assert s["bytes_forwarded"] == 40 + 10 * MSS


def test_without_offloads_the_same_frame_is_oversized() -> None:
    """The control: `handle` takes frames up to the MTU, as the engine always did."""
    fw = primed()
    assert fw.handle("eth0", super_frame(10)[10:], 1.0) == []
    assert fw.stats()["oversized"] == 1 and fw.stats()["forwarded"] == 0


def test_ecn_marked_super_frames_pass_too() -> None:
    fw = primed()
    assert len(fw.handle_vnet("eth0", super_frame(4, gso_type=GSO_TCPV4 | GSO_ECN), 1.0)) == 1
    assert fw.stats()["gso_forwarded"] == 1


@pytest.mark.parametrize(
    ("gso", "df", "forwarded"), [(960, True, 1), (961, True, 0), (961, False, 0)]
)
def test_segments_are_held_to_the_egress_mtu(gso: int, df: bool, forwarded: int) -> None:
    """The kernel's GSO check: IP and TCP headers plus `gso_size` must fit the egress MTU
    (1000 here: 960 payload bytes fit, 961 do not), whatever the super-frame's own length. Too
    big with DF: fragmentation needed, naming the MTU; without DF: dropped (the kernel would
    fragment each segment)."""
    fw = primed(mtu1=1000)
    out = fw.handle_vnet("eth0", super_frame(5, gso=gso, df=df), 1.0)
    s = fw.stats()
    assert s["forwarded"] == forwarded
    if forwarded:
        assert [n for n, _ in out] == ["eth1"]
    elif df:
        [(name, error)] = out
        assert name == "eth0" and bytes(error[:10]) == PLAIN_BYTES
        _, icmp = icmp_of(error[10:])
        assert (icmp.msg_type, icmp.code, icmp.next_hop_mtu) == (
            TYPE_DST_UNREACHABLE,
            UNREACH_FRAG_NEEDED,
            1000,
        )
        assert s["frag_needed"] == 1
    else:
        assert out == [] and s["gso_too_big"] == 1


def _ip_proto_udp(frame: bytearray) -> bytearray:
    frame[10 + 23] = PROTO_UDP
    struct.pack_into("!H", frame, 10 + 24, 0)
    Ipv4Packet(memoryview(frame)[24:44]).fill_checksum()
    return frame


def _fragment(frame: bytearray) -> bytearray:
    struct.pack_into("!H", frame, 10 + 20, 100)  # the last fragment, at offset 800
    struct.pack_into("!H", frame, 10 + 24, 0)
    Ipv4Packet(memoryview(frame)[24:44]).fill_checksum()
    return frame


def _tcp_offset(frame: bytearray) -> bytearray:
    frame[10 + 34 + 12] = 15 << 4  # 60-byte TCP header in a 60-byte datagram
    return frame


BAD_GSO = {
    "udp gso type": lambda: super_frame(gso_type=GSO_UDP),
    "tcpv6 gso type": lambda: super_frame(gso_type=GSO_TCPV6),
    "checksum not partial": lambda: super_frame(flags=F_DATA_VALID),
    "gso_size 0": lambda: super_frame(gso_size=0),
    "csum_start elsewhere": lambda: super_frame(csum_start=40),
    "csum_offset of udp": lambda: super_frame(csum_offset=6),
    "not tcp inside": lambda: _ip_proto_udp(super_frame()),
    "a fragment": lambda: _fragment(super_frame()),
    "tcp header past the datagram": lambda: _tcp_offset(super_frame(1, gso=0, gso_size=8)),
}


@pytest.mark.parametrize("case", sorted(BAD_GSO))
def test_what_gro_never_makes_is_refused(case: str) -> None:
    fw = primed()
    assert fw.handle_vnet("eth0", BAD_GSO[case](), 1.0) == []
    s = fw.stats()
    assert s["bad_gso"] == 1 and s["forwarded"] == 0, s


def test_a_super_frame_held_for_arp_keeps_its_header() -> None:
    fw = make()
    frame = super_frame(6)
    header = bytes(frame[:10])
    [(name, request)] = fw.handle_vnet("eth0", frame, 1.0)
    assert name == "eth1" and bytes(request[:10]) == PLAIN_BYTES
    assert is_arp_request_for(request[10:], B_IP)
    frame[:] = bytes(len(frame))  # the RX slot is reused: the engine kept its own copy
    [(name, released)] = fw.handle_vnet(
        "eth1", bytearray(PLAIN_BYTES) + reply_to_fw1(B_MAC, B_IP), 1.1
    )
    assert name == "eth1" and bytes(released[:10]) == header
    assert released[10:16] == B_MAC
    assert Ipv4Repr.parse(released[24:]).payload_len == 20 + 6 * MSS


def test_arp_retransmissions_from_poll_vnet_carry_the_plain_header() -> None:
    fw = make()
    fw.handle_vnet("eth0", super_frame(2), 0.0)
    due = fw.next_timeout()
    assert due is not None
    [(name, again)] = fw.poll_vnet(due)
    assert name == "eth1" and bytes(again[:10]) == PLAIN_BYTES
    assert is_arp_request_for(again[10:], B_IP)


def _partial_tcp(payload: bytes) -> bytearray:
    tcp = bytearray(20)
    tcp[12] = 5 << 4
    struct.pack_into("!H", tcp, 16, partial_csum_seed(A_IP, B_IP, PROTO_TCP, 20 + len(payload)))
    hdr = VnetHdr(flags=F_NEEDS_CSUM, csum_start=34, csum_offset=16, hdr_len=54)
    return bytearray(hdr.to_bytes()) + ip_frame(payload=bytes(tcp) + payload, proto=PROTO_TCP)


def test_a_partial_checksum_is_completed_before_fragmenting() -> None:
    """A local sender over a veth leaves the TCP checksum to the NIC; cut into fragments, the
    segment must carry its real checksum, or the receiver drops the reassembled datagram."""
    fw = primed(mtu1=600)
    payload = random.Random(3).randbytes(1400)
    out = fw.handle_vnet("eth0", _partial_tcp(payload), 1.0)
    assert len(out) == 3 and all(bytes(f[:10]) == PLAIN_BYTES for _, f in out)
    reasm = Ipv4Reassembler()
    whole = None
    for _, piece in out:
        ip = Ipv4Repr.parse(memoryview(piece)[24:])
        whole = reasm.push(ip, Ipv4Packet(memoryview(piece)[24:]).payload, 1.0) or whole
    assert whole is not None
    segment = bytes(whole.payload)
    pseudo = pseudo_header_sum(A_IP, B_IP, PROTO_TCP, len(segment))
    assert ones_sum(segment, pseudo) == 0xFFFF and segment[20:] == payload
    assert fw.stats()["csum_completed"] == 1


def test_a_partial_checksum_outside_the_datagram_is_refused() -> None:
    fw = primed()
    frame = _partial_tcp(bytes(100))
    struct.pack_into("=H", frame, 8, 160)  # csum_offset past the end
    assert fw.handle_vnet("eth0", frame, 1.0) == []
    assert fw.stats()["bad_header"] == 1 and fw.stats()["forwarded"] == 0


def test_a_frame_too_short_for_its_header_is_counted() -> None:
    fw = primed()
    assert fw.handle_vnet("eth0", bytes(9), 1.0) == []
    assert fw.handle_vnet("eth0", bytes(10 + 13), 1.0) == []
    assert fw.stats()["bad_frame"] == 2

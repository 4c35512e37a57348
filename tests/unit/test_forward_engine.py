"""guest.stack.forward: the sans-I/O IPv4 forwarding engine, on real frames, no I/O."""

from __future__ import annotations

import random
import struct

import pytest

from guest.stack.forward import Forwarder, Interface, Route
from guest.stack.wire.addr import MAC_BROADCAST, MAC_ZERO, ipv4, mac
from guest.stack.wire.arp import OP_REPLY, OP_REQUEST, ArpRepr
from guest.stack.wire.checksum import ones_sum, update16
from guest.stack.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.icmp import (
    TYPE_DST_UNREACHABLE,
    TYPE_ECHO_REQUEST,
    TYPE_TIME_EXCEEDED,
    UNREACH_FRAG_NEEDED,
    UNREACH_NET,
    Icmpv4Repr,
)
from guest.stack.wire.ipv4 import PROTO_ICMP, PROTO_UDP, Ipv4Packet, Ipv4Repr
from guest.stack.wire.ipv4_frag import Ipv4Reassembler

FW0_MAC, FW0_IP = mac("02:00:00:00:01:01"), ipv4("198.18.1.1")
FW1_MAC, FW1_IP = mac("02:00:00:00:02:01"), ipv4("198.18.2.1")
A_MAC, A_IP = mac("52:54:00:00:01:02"), ipv4("198.18.1.2")
B_MAC, B_IP = mac("52:54:00:00:02:02"), ipv4("198.18.2.2")
GW_MAC, GW_IP = mac("52:54:00:00:02:fe"), ipv4("198.18.2.254")
EVIL_MAC = mac("52:54:00:66:66:66")
FAR_IP = ipv4("10.9.1.1")  # behind GW


def make(mtu1: int = 1500, **kw) -> Forwarder:
    return Forwarder(
        [
            Interface.from_text("eth0", "02:00:00:00:01:01", "198.18.1.1/24"),
            Interface.from_text("eth1", "02:00:00:00:02:01", "198.18.2.1/24", mtu=mtu1),
        ],
        [Route.from_text("10.9.0.0/16", via="198.18.2.254")],
        **kw,
    )


def ip_frame(
    src: int = A_IP,
    dst: int = B_IP,
    payload: bytes = b"x" * 32,
    *,
    ttl: int = 64,
    proto: int = PROTO_UDP,
    df: bool = False,
    mf: bool = False,
    frag_offset: int = 0,
    ident: int = 0x1234,
    eth_dst: bytes = FW0_MAC,
    eth_src: bytes = A_MAC,
    pad_to: int = 0,
) -> bytearray:
    ip = Ipv4Repr(src, dst, proto, len(payload), ttl, ident, df, mf, frag_offset)
    buf = bytearray(14 + 20 + len(payload))
    EthernetRepr(eth_src, eth_dst, ETHERTYPE_IPV4).emit(buf, 0)
    ip.emit(buf, 14)
    buf[34:] = payload
    if len(buf) < pad_to:
        buf += bytes(pad_to - len(buf))
    return buf


def arp_frame(op, sha, spa, tha, tpa, eth_dst) -> bytearray:
    buf = bytearray(42)
    EthernetRepr(sha, eth_dst, ETHERTYPE_ARP).emit(buf, 0)
    ArpRepr(op, sha, spa, tha, tpa).emit(buf, 14)
    return buf


def reply_to_fw1(sha: bytes, spa: int) -> bytearray:
    return arp_frame(OP_REPLY, sha, spa, FW1_MAC, FW1_IP, FW1_MAC)


def reply_to_fw0(sha: bytes, spa: int) -> bytearray:
    return arp_frame(OP_REPLY, sha, spa, FW0_MAC, FW0_IP, FW0_MAC)


def ethertype(frame) -> int:
    return frame[12] << 8 | frame[13]


def is_arp_request_for(frame, ip: int) -> bool:
    if ethertype(frame) != ETHERTYPE_ARP:
        return False
    arp = ArpRepr.parse(memoryview(frame)[14:])
    return arp.operation == OP_REQUEST and arp.target_protocol_addr == ip


def primed(**kw) -> Forwarder:
    """A forwarder that has resolved A (eth0), B and GW (eth1) through its own requests."""
    fw = make(**kw)
    for iface, ip, hw, reply in (
        ("eth1", B_IP, B_MAC, reply_to_fw1),
        ("eth1", GW_IP, GW_MAC, reply_to_fw1),
        ("eth0", A_IP, A_MAC, reply_to_fw0),
    ):
        src, dst, into = (B_IP, ip, "eth1") if iface == "eth0" else (A_IP, ip, "eth0")
        if ip == GW_IP:
            dst = FAR_IP
        eth_dst = FW1_MAC if into == "eth1" else FW0_MAC
        out = fw.handle(into, ip_frame(src, dst, eth_dst=eth_dst), 0.0)
        assert any(is_arp_request_for(f, ip) for _, f in out), out
        released = fw.handle(iface, reply(hw, ip), 0.0)
        assert [name for name, _ in released] == [iface]
    return fw


def icmp_of(frame) -> tuple[Ipv4Repr, Icmpv4Repr]:
    ip = Ipv4Repr.parse(memoryview(frame)[14:])
    return ip, Icmpv4Repr.parse(Ipv4Packet(memoryview(frame)[14:]).payload)


# -- forwarding ---------------------------------------------------------------------------------


def test_forwards_in_place_with_ttl_checksum_and_macs_rewritten() -> None:
    fw = primed()
    before = fw.stats()["forwarded"]
    frame = ip_frame(payload=b"hello world, through the middle" * 3)
    original = bytes(frame)
    out = fw.handle("eth0", frame, 1.0)
    assert len(out) == 1
    name, sent = out[0]
    assert name == "eth1" and sent is frame  # the same buffer, rewritten
    assert sent[0:6] == B_MAC and sent[6:12] == FW1_MAC
    assert sent[22] == original[22] - 1
    assert ones_sum(sent[14:34]) == 0xFFFF
    full = bytearray(sent[14:34])
    Ipv4Packet(full).fill_checksum()
    assert full == sent[14:34]
    assert sent[26:] == original[26:] and sent[12:22] == original[12:22]
    assert fw.stats()["forwarded"] == before + 1


def test_routes_via_gateway_and_trims_padding() -> None:
    fw = primed()
    frame = ip_frame(dst=FAR_IP, payload=b"ab", pad_to=60)
    [(name, sent)] = fw.handle("eth0", frame, 1.0)
    assert name == "eth1" and sent[0:6] == GW_MAC
    assert len(sent) == 14 + 20 + 2


def test_a_memoryview_frame_is_rewritten_in_place() -> None:
    fw = primed()
    ring = bytearray(2048)
    frame = ip_frame(src=B_IP, dst=A_IP, eth_dst=FW1_MAC, eth_src=B_MAC)
    ring[100 : 100 + len(frame)] = frame
    slot = memoryview(ring)[100 : 100 + len(frame)]
    [(name, sent)] = fw.handle("eth1", slot, 1.0)
    assert name == "eth0" and sent.obj is ring
    assert ring[100:106] == A_MAC and ring[100 + 22] == 63


def test_incremental_checksum_equals_full_recomputation() -> None:
    fw = primed()
    before = fw.stats()["forwarded"]
    rng = random.Random(1624)
    for _ in range(3000):
        payload = rng.randbytes(rng.randrange(0, 64))
        ip = Ipv4Repr(
            rng.choice([A_IP, ipv4("198.18.1.77"), ipv4("100.64.0.1")]),
            rng.choice([B_IP, FAR_IP, ipv4("10.9.255.3")]),
            rng.randrange(256),
            len(payload),
            rng.randrange(2, 256),
            rng.randrange(0x10000),
            rng.random() < 0.5,
            dscp=rng.randrange(64),
            ecn=rng.randrange(4),
        )
        frame = bytearray(34 + len(payload))
        EthernetRepr(A_MAC, FW0_MAC, ETHERTYPE_IPV4).emit(frame, 0)
        ip.emit(frame, 14)
        frame[34:] = payload
        ttl = frame[22]
        [(_, sent)] = fw.handle("eth0", frame, 1.0)
        full = bytearray(sent[14:34])
        Ipv4Packet(full).fill_checksum()
        assert sent[14:34] == full and sent[22] == ttl - 1
    assert fw.stats()["forwarded"] == before + 3000


def test_update16_matches_full_sum_for_random_words() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        header = bytearray(rng.randbytes(20))
        header[0] = 0x45
        header[10:12] = b"\x00\x00"
        Ipv4Packet(header).fill_checksum()
        old_cs = struct.unpack_from("!H", header, 10)[0]
        i = rng.choice([2, 4, 6, 8, 12, 14, 16, 18])
        old = struct.unpack_from("!H", header, i)[0]
        new = rng.randrange(0x10000)
        struct.pack_into("!H", header, i, new)
        full = bytearray(header)
        Ipv4Packet(full).fill_checksum()
        assert update16(old_cs, old, new) == struct.unpack_from("!H", full, 10)[0]


# -- ICMP errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, 1])
def test_ttl_expiry_answers_time_exceeded_quoting_the_header(ttl: int) -> None:
    fw = primed()
    before = fw.stats()["forwarded"]
    frame = ip_frame(ttl=ttl, payload=bytes(range(40)))
    original = bytes(frame)
    [(name, err)] = fw.handle("eth0", frame, 1.0)
    assert name == "eth0" and err[0:6] == A_MAC and err[6:12] == FW0_MAC
    ip, icmp = icmp_of(err)
    assert (ip.src_addr, ip.dst_addr, ip.protocol) == (FW0_IP, A_IP, PROTO_ICMP)
    assert (icmp.msg_type, icmp.code) == (TYPE_TIME_EXCEEDED, 0)
    assert bytes(icmp.data[:28]) == original[14:42]  # header as received + 8 bytes
    assert icmp.quoted.header.ttl == ttl
    s = fw.stats()
    assert s["ttl_expired"] == 1 and s["icmp_time_exceeded_out"] == 1
    assert s["forwarded"] == before


def test_no_route_answers_net_unreachable() -> None:
    fw = primed()
    [(name, err)] = fw.handle("eth0", ip_frame(dst=ipv4("203.0.113.9")), 1.0)
    ip, icmp = icmp_of(err)
    assert name == "eth0" and ip.src_addr == FW0_IP and ip.dst_addr == A_IP
    assert (icmp.msg_type, icmp.code) == (TYPE_DST_UNREACHABLE, UNREACH_NET)
    assert fw.stats()["no_route"] == 1


def test_df_and_too_big_answers_frag_needed_with_the_egress_mtu() -> None:
    fw = primed(mtu1=1000)
    frame = ip_frame(payload=bytes(1400), df=True)
    [(name, err)] = fw.handle("eth0", frame, 1.0)
    ip, icmp = icmp_of(err)
    assert name == "eth0" and ip.dst_addr == A_IP
    assert (icmp.msg_type, icmp.code, icmp.next_hop_mtu) == (
        TYPE_DST_UNREACHABLE,
        UNREACH_FRAG_NEEDED,
        1000,
    )
    assert len(err) - 14 <= 576
    assert fw.stats()["frag_needed"] == 1


def test_too_big_without_df_is_fragmented_and_reassembles() -> None:
    fw = primed(mtu1=600)
    payload = random.Random(7).randbytes(1400)
    out = fw.handle("eth0", ip_frame(payload=payload, ttl=9), 1.0)
    assert len(out) == 3 and all(name == "eth1" for name, _ in out)
    reasm = Ipv4Reassembler()
    whole = None
    for _, piece in out:
        assert len(piece) - 14 <= 600 and piece[0:6] == B_MAC
        ip = Ipv4Repr.parse(memoryview(piece)[14:])  # verifies the checksum
        assert ip.ttl == 8 and not ip.dont_frag
        whole = reasm.push(ip, Ipv4Packet(memoryview(piece)[14:]).payload, 1.0) or whole
    assert whole is not None and bytes(whole.payload) == payload
    s = fw.stats()
    assert s["fragmented"] == 1 and s["fragments_out"] == 3


def test_no_error_about_icmp_errors_or_non_first_fragments() -> None:
    fw = primed()
    quoted = bytes(ip_frame()[14:42])
    error = bytes([TYPE_TIME_EXCEEDED, 0, 0, 0, 0, 0, 0, 0]) + quoted
    assert fw.handle("eth0", ip_frame(ttl=1, proto=PROTO_ICMP, payload=error), 1.0) == []
    assert fw.handle("eth0", ip_frame(ttl=1, frag_offset=64, payload=bytes(16)), 1.0) == []
    echo = bytes([TYPE_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1]) + b"ping"
    assert len(fw.handle("eth0", ip_frame(ttl=1, proto=PROTO_ICMP, payload=echo), 1.0)) == 1
    s = fw.stats()
    assert s["ttl_expired"] == 3 and s["icmp_suppressed"] == 2 and s["icmp_time_exceeded_out"] == 1


def test_icmp_errors_are_rate_limited_on_the_callers_clock() -> None:
    fw = primed(icmp_rate=1.0, icmp_burst=2)
    sent = [len(fw.handle("eth0", ip_frame(ttl=1), 5.0)) for _ in range(4)]
    assert sent == [1, 1, 0, 0]
    assert len(fw.handle("eth0", ip_frame(ttl=1), 6.0)) == 1
    assert fw.stats()["icmp_rate_limited"] == 2


# -- ARP ----------------------------------------------------------------------------------------


def test_unresolved_next_hop_queues_then_releases_on_the_reply() -> None:
    fw = make(queue_limit=4)
    frames = [ip_frame(ident=i) for i in range(6)]
    first = fw.handle("eth0", frames[0], 0.0)
    [(name, req)] = first
    assert name == "eth1" and is_arp_request_for(req, B_IP) and req[0:6] == MAC_BROADCAST
    for f in frames[1:]:
        assert fw.handle("eth0", f, 0.1) == []
    assert fw.pending("eth1") == {B_IP: 4}
    assert fw.stats()["queue_drops"] == 2
    released = fw.handle("eth1", reply_to_fw1(B_MAC, B_IP), 0.2)
    assert [n for n, _ in released] == ["eth1"] * 4
    idents = [struct.unpack_from("!H", f, 18)[0] for _, f in released]
    assert idents == [2, 3, 4, 5]  # a full queue drops its oldest
    assert all(f[0:6] == B_MAC and f[6:12] == FW1_MAC for _, f in released)
    assert fw.neighbors("eth1", 0.2) == {B_IP: B_MAC}
    assert fw.next_timeout() is None or fw.pending("eth1") == {}


def test_resolution_gives_up_after_its_retries_and_counts_the_drops() -> None:
    fw = make()
    fw.handle("eth0", ip_frame(), 0.0)
    fw.handle("eth0", ip_frame(), 0.0)
    assert fw.next_timeout() == 1.0
    assert [is_arp_request_for(f, B_IP) for _, f in fw.poll(1.0)] == [True]
    # handle() runs an overdue poll itself: a caller that never polls still gets the bounds.
    out = fw.handle("eth0", ip_frame(dst=ipv4("198.18.2.3")), 2.0)
    assert sum(is_arp_request_for(f, B_IP) for _, f in out) == 1
    fw.poll(3.0)
    assert B_IP not in fw.pending("eth1")
    s = fw.stats()
    assert s["arp_failed"] == 1 and s["arp_unresolved_drops"] == 2 and s["queue_drops"] == 2
    # A reply after the window closed teaches nothing.
    assert fw.handle("eth1", reply_to_fw1(B_MAC, B_IP), 3.5) == []
    assert fw.neighbors("eth1", 3.5) == {}


def test_spoofed_arp_never_moves_a_known_next_hop() -> None:
    fw = primed()
    # Unsolicited reply, gratuitous request and a request for us, all claiming B's address.
    assert fw.handle("eth1", reply_to_fw1(EVIL_MAC, B_IP), 1.0) == []
    grat = arp_frame(OP_REQUEST, EVIL_MAC, B_IP, MAC_ZERO, B_IP, MAC_BROADCAST)
    assert fw.handle("eth1", grat, 1.0) == []
    ask = arp_frame(OP_REQUEST, EVIL_MAC, B_IP, MAC_ZERO, FW1_IP, MAC_BROADCAST)
    [(name, answer)] = fw.handle("eth1", ask, 1.0)  # answered (hosts must find us) ...
    assert name == "eth1" and answer[0:6] == EVIL_MAC
    assert fw.neighbors("eth1", 1.0)[B_IP] == B_MAC  # ... but never learned
    [(_, sent)] = fw.handle("eth0", ip_frame(), 1.0)
    assert sent[0:6] == B_MAC
    s = fw.stats()
    assert s["arp_spoof_ignored"] == 1 and s["arp_not_for_us"] == 1


def test_unsolicited_replies_and_requests_teach_nothing() -> None:
    fw = make()
    fw.handle("eth1", reply_to_fw1(B_MAC, B_IP), 0.0)
    ask = arp_frame(OP_REQUEST, B_MAC, B_IP, MAC_ZERO, FW1_IP, MAC_BROADCAST)
    fw.handle("eth1", ask, 0.0)
    assert fw.neighbors("eth1", 0.0) == {}
    assert fw.stats()["arp_unsolicited_ignored"] == 1
    # A second, different answer while resolving: the first one wins.
    fw.handle("eth0", ip_frame(), 1.0)
    fw.handle("eth1", reply_to_fw1(B_MAC, B_IP), 1.1)
    fw.handle("eth1", reply_to_fw1(EVIL_MAC, B_IP), 1.2)
    assert fw.neighbors("eth1", 1.2) == {B_IP: B_MAC}
    assert fw.stats()["arp_spoof_ignored"] == 1


# -- malformed and not-to-forward ---------------------------------------------------------------


def _options_frame() -> bytearray:
    f = ip_frame()
    f[34:34] = b"\x01\x01\x01\x01"  # four NOPs: IHL 6
    f[14] = 0x46
    struct.pack_into("!H", f, 16, struct.unpack_from("!H", f, 16)[0] + 4)
    Ipv4Packet(memoryview(f)[14:]).fill_checksum()
    return f


def _set(frame: bytearray, offset: int, value: int, *, fix: bool = True) -> bytearray:
    frame[offset] = value
    if fix:
        struct.pack_into("!H", frame, 24, 0)
        ihl = (frame[14] & 15) * 4
        if ihl >= 20 and len(frame) >= 14 + ihl:
            Ipv4Packet(memoryview(frame)[14:]).fill_checksum()
    return frame


def _total_len(value: int) -> bytearray:
    f = ip_frame()
    struct.pack_into("!H", f, 16, value)
    Ipv4Packet(memoryview(f)[14:]).fill_checksum()
    return f


BAD = {
    "runt": (bytearray(10), "bad_frame"),
    "truncated-ip": (ip_frame()[:30], "bad_header"),
    "ihl-4": (_set(ip_frame(), 14, 0x44), "bad_header"),
    "ihl-past-frame": (_set(ip_frame(payload=b""), 14, 0x4F, fix=False), "bad_header"),
    "version-6": (_set(ip_frame(), 14, 0x65), "bad_header"),
    "total-len-long": (_total_len(2000), "bad_header"),
    "total-len-short": (_total_len(12), "bad_header"),
    "bad-checksum": (_set(ip_frame(), 22, 7, fix=False), "bad_checksum"),
    "options": (_options_frame(), "options_dropped"),
    "frag-odd": (ip_frame(mf=True, payload=bytes(13)), "bad_fragment"),
    "frag-death": (ip_frame(frag_offset=65528, payload=bytes(40)), "bad_fragment"),
    "oversized": (ip_frame(payload=bytes(1481)), "oversized"),
    "src-loopback": (ip_frame(src=ipv4("127.0.0.1")), "martian_source"),
    "src-multicast": (ip_frame(src=ipv4("224.0.0.5")), "martian_source"),
    "src-ours": (ip_frame(src=FW1_IP), "martian_source"),
    "dst-zero-net": (ip_frame(dst=ipv4("0.1.2.3")), "martian_dest"),
    "dst-class-e": (ip_frame(dst=ipv4("240.0.0.1")), "martian_dest"),
    "dst-multicast": (ip_frame(dst=ipv4("239.1.1.1")), "broadcast_dropped"),
    "dst-broadcast": (ip_frame(dst=0xFFFFFFFF), "broadcast_dropped"),
    "dst-directed": (ip_frame(dst=ipv4("198.18.2.255")), "broadcast_dropped"),
    "eth-broadcast": (ip_frame(eth_dst=MAC_BROADCAST), "broadcast_dropped"),
    "eth-other": (ip_frame(eth_dst=B_MAC), "not_for_us"),
    "to-self": (ip_frame(dst=FW1_IP), "to_self"),
    "ipv6": (
        bytearray(b"\x02\x00\x00\x00\x01\x01" + A_MAC + b"\x86\xdd" + bytes(40)),
        "other_ethertype",
    ),
    "arp-short": (bytearray(FW0_MAC + A_MAC + b"\x08\x06" + bytes(10)), "bad_arp"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_and_unroutable_frames_are_counted_never_forwarded(case: str) -> None:
    frame, counter = BAD[case]
    fw = primed()
    before = fw.stats()
    assert fw.handle("eth0", bytearray(frame), 1.0) == []
    after = fw.stats()
    assert after[counter] == before[counter] + 1
    assert after["forwarded"] == before["forwarded"]


def test_valid_fragments_are_forwarded_as_they_are() -> None:
    fw = primed()
    first = fw.handle("eth0", ip_frame(mf=True, payload=bytes(64)), 1.0)
    last = fw.handle("eth0", ip_frame(frag_offset=64, payload=bytes(10)), 1.0)
    for [(name, f)] in (first, last):
        assert name == "eth1" and ones_sum(f[14:34]) == 0xFFFF and f[22] == 63


def test_bytes_input_is_accepted() -> None:
    fw = primed()
    [(name, sent)] = fw.handle("eth0", bytes(ip_frame()), 1.0)
    assert name == "eth1" and sent[22] == 63


# -- fuzz ---------------------------------------------------------------------------------------


def _mutate(rng: random.Random, frame: bytearray) -> bytearray:
    f = bytearray(frame)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and f:
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
        elif kind == 1 and f:
            f[rng.randrange(min(len(f), 40))] = rng.randrange(256)
        elif kind == 2:
            del f[rng.randrange(len(f) + 1) :]
        elif kind == 3:
            f += rng.randbytes(rng.randrange(1, 64))
        elif kind == 4 and len(f) >= 34:
            # keep the header checksum right so mutations reach past the checksum check
            struct.pack_into("!H", f, 24, 0)
            Ipv4Packet(memoryview(f)[14:34]).fill_checksum()
        elif kind == 5 and len(f) >= 23:
            f[22] = rng.randrange(3)
    return f


def test_fuzzed_frames_never_crash_and_forward_only_valid_frames() -> None:
    rng = random.Random(20040009)
    fw = primed(mtu1=1000)
    seeds = [
        ip_frame(payload=bytes(1200)),
        ip_frame(dst=FAR_IP, df=True, payload=bytes(1100)),
        ip_frame(mf=True, payload=bytes(64)),
        ip_frame(proto=PROTO_ICMP, payload=bytes([8, 0, 0, 0, 0, 1, 0, 1]) + bytes(20)),
        reply_to_fw0(A_MAC, A_IP),
        ip_frame(src=B_IP, dst=A_IP, eth_dst=FW1_MAC, eth_src=B_MAC),
    ]
    ours = {FW0_IP, FW1_IP}
    for i in range(4000):
        seed = rng.choice(seeds)
        frame = _mutate(rng, seed)
        iface = "eth1" if seed[0:6] == FW1_MAC else "eth0"
        ttl_in = frame[22] if len(frame) > 22 else None
        out = fw.handle(iface, frame, i * 0.001)
        for name, sent in out:
            assert name in ("eth0", "eth1")
            if ethertype(sent) == ETHERTYPE_ARP:
                ArpRepr.parse(memoryview(sent)[14:])
                continue
            ip = Ipv4Repr.parse(memoryview(sent)[14:])  # verifies the header checksum
            assert sent[14] == 0x45 and len(sent) == 14 + 20 + ip.payload_len
            assert len(sent) - 14 <= (1000 if name == "eth1" else 1500)
            if ip.src_addr in ours:
                continue  # an ICMP error of ours
            assert ip.ttl == ttl_in - 1 and ip.ttl >= 1
    assert fw.stats()["frames_in"] > 4000

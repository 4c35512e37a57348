"""Two NetStacks on the in-memory link: ARP, ICMP echo, UDP both ways, ARP timers and queues."""

from __future__ import annotations

import pytest

from guest.stack.core import EchoReplyReadable, UdpReadable, UdpUnreachable
from guest.stack.wire.addr import MAC_ZERO, ipv4
from guest.stack.wire.arp import ArpRepr
from guest.stack.wire.ethernet import ETHERTYPE_ARP, EthernetRepr
from guest.testing.stack_sim import IP_A, IP_B, MAC_A, MAC_B, LinkConfig, make_network


def arp_frame(sha: bytes, spa: int, eth_dst: bytes, tpa: int, op: int) -> bytearray:
    buf = bytearray(42)
    EthernetRepr(sha, eth_dst, ETHERTYPE_ARP).emit(buf, 0)
    ArpRepr(op, sha, spa, MAC_ZERO, tpa).emit(buf, 14)
    return buf


def is_arp_request_broadcast(frame: bytes) -> bool:
    return frame[12:14] == b"\x08\x06" and frame[0:6] == b"\xff" * 6 and frame[21] == 1


def test_arp_resolution_then_icmp_echo() -> None:
    net = make_network()
    a, b = net.a.stack, net.b.stack
    net.capture = True
    ping = a.icmp_bind()
    assert a.icmp_echo(ping, IP_B, 1, b"hello stackbed", net.now)
    net.run(stop=lambda: bool(a.counters.icmp_in))
    # First the broadcast request and the reply, then echo request and reply.
    kinds = [int.from_bytes(f[12:14], "big") for _, _, f in net.captured]
    assert kinds[:2] == [ETHERTYPE_ARP, ETHERTYPE_ARP]
    assert is_arp_request_broadcast(net.captured[0][2])
    assert net.captured[1][2][0:6] == MAC_A  # the reply is unicast to the asker
    assert a.arp_table() == {IP_B: MAC_B.hex(":")}
    assert b.arp_table() == {IP_A: MAC_A.hex(":")}  # learned from the request aimed at it
    assert b.counters.icmp_echo_requests_in == 1 and b.counters.icmp_echo_replies_out == 1
    assert EchoReplyReadable(ping) in net.a.log
    assert a.icmp_recv(ping) == (b"hello stackbed", ipv4(IP_B), 1)
    assert a.icmp_recv(ping) is None
    # A second ping needs no ARP.
    requests = a.counters.arp_requests_out
    a.icmp_echo(ping, IP_B, 2, b"x" * 3000, net.now)  # fragmented both ways
    net.run(stop=lambda: a.counters.icmp_in == 2)
    assert a.counters.arp_requests_out == requests
    assert a.icmp_recv(ping) == (b"x" * 3000, ipv4(IP_B), 2)
    assert a.counters.ip_frags_out == 3 and a.counters.ip_reassembled == 1
    assert b.counters.ip_reassembled == 1
    assert a.counters.drops_total == b.counters.drops_total == 0


def test_udp_both_ways() -> None:
    net = make_network()
    a, b = net.a.stack, net.b.stack
    ha = a.udp_bind(5000)
    hb = b.udp_bind(6000)
    for i in range(5):
        assert a.udp_sendto(ha, f"a{i}".encode(), IP_B, 6000, net.now)
    net.run(stop=lambda: b.counters.udp_in == 5)
    assert UdpReadable(hb) in net.b.log
    got = []
    while (item := b.udp_recvfrom(hb)) is not None:
        got.append(item)
    assert got == [(f"a{i}".encode(), ipv4(IP_A), 5000) for i in range(5)]
    big = bytes(range(256)) * 40  # 10240 bytes: 7 fragments
    assert b.udp_sendto(hb, big, IP_A, 5000, net.now)
    assert b.udp_sendto(hb, b"", IP_A, 5000, net.now)
    net.run(stop=lambda: a.counters.udp_in == 2)
    assert a.udp_recvfrom(ha) == (big, ipv4(IP_B), 6000)
    assert a.udp_recvfrom(ha) == (b"", ipv4(IP_B), 6000)
    assert b.counters.ip_frags_out == 7
    info = a.socket_info(ha)
    assert info["datagrams_out"] == 5 and info["datagrams_in"] == 2


def test_udp_broadcast() -> None:
    net = make_network()
    a, b = net.a.stack, net.b.stack
    ha = a.udp_bind(0)
    hb = b.udp_bind(7000)
    assert a.udp_sendto(ha, b"to all", "198.18.1.255", 7000, net.now)
    assert a.udp_sendto(ha, b"to all again", "255.255.255.255", 7000, net.now)
    net.run(stop=lambda: b.counters.udp_in == 2)
    assert b.udp_recvfrom(hb)[0] == b"to all"
    assert b.udp_recvfrom(hb)[0] == b"to all again"
    assert a.counters.arp_requests_out == 0  # broadcasts need no resolution


def test_udp_to_closed_port_gets_port_unreachable() -> None:
    net = make_network()
    a, b = net.a.stack, net.b.stack
    ha = a.udp_bind(5000)
    a.udp_sendto(ha, b"anyone?", IP_B, 9999, net.now)
    net.run(stop=lambda: a.counters.icmp_unreachable_in == 1)
    assert b.counters.udp_no_port == 1 and b.counters.icmp_unreachable_out == 1
    assert b.counters.drops["udp:no-port"] == 1
    assert UdpUnreachable(ha, ipv4(IP_B), 9999) in net.a.log


def test_port_unreachable_is_rate_limited() -> None:
    net = make_network(b={"icmp_error_rate": 1.0, "icmp_error_burst": 3})
    a, b = net.a.stack, net.b.stack
    ha = a.udp_bind(5000)
    for _ in range(20):
        a.udp_sendto(ha, b"x", IP_B, 9999, net.now)
    net.advance(0.1)
    assert b.counters.udp_no_port == 20
    assert b.counters.icmp_unreachable_out == 3
    assert b.counters.icmp_rate_limited == 17
    net.advance(2.0)  # tokens come back at 1/s
    a.udp_sendto(ha, b"x", IP_B, 9999, net.now)
    net.advance(0.1)
    assert b.counters.icmp_unreachable_out == 4


def test_udp_receive_queue_is_bounded() -> None:
    net = make_network(b={"udp_queue_datagrams": 4})
    a, b = net.a.stack, net.b.stack
    ha = a.udp_bind(5000)
    hb = b.udp_bind(6000)
    for i in range(10):
        a.udp_sendto(ha, bytes([i]), IP_B, 6000, net.now)
    net.advance(0.1)
    assert b.socket_info(hb)["drops"] == 6
    assert b.counters.udp_queue_drops == 6
    assert [b.udp_recvfrom(hb)[0] for _ in range(4)] == [bytes([i]) for i in range(4)]
    assert b.udp_recvfrom(hb) is None


def test_arp_cache_expiry_and_re_resolution() -> None:
    net = make_network(arp_timeout=10.0, arp_refresh=0.0)
    a, b = net.a.stack, net.b.stack
    ha, hb = a.udp_bind(5000), b.udp_bind(6000)
    a.udp_sendto(ha, b"1", IP_B, 6000, net.now)
    net.advance(0.1)
    assert a.counters.arp_requests_out == 1
    net.advance(5.0)
    a.udp_sendto(ha, b"2", IP_B, 6000, net.now)  # entry still fresh
    net.advance(0.1)
    assert a.counters.arp_requests_out == 1
    net.advance(10.0)  # idle past the timeout
    assert a.arp_table(net.now) == {}
    a.udp_sendto(ha, b"3", IP_B, 6000, net.now)
    net.advance(0.1)
    assert a.counters.arp_requests_out == 2
    assert [b.udp_recvfrom(hb)[0] for _ in range(3)] == [b"1", b"2", b"3"]
    assert a.counters.arp_queue_drops == 0


def test_arp_entry_in_use_is_refreshed_without_stalling() -> None:
    net = make_network(arp_timeout=10.0, arp_refresh=3.0)
    net.capture = True
    a, b = net.a.stack, net.b.stack
    ha, hb = a.udp_bind(5000), b.udp_bind(6000)
    for i in range(40):  # one datagram per second for 40 s, four timeouts' worth
        a.udp_sendto(ha, bytes([i]), IP_B, 6000, net.now)
        net.advance(1.0)
    broadcasts = [f for _, st, f in net.captured if st is a and is_arp_request_broadcast(f)]
    assert len(broadcasts) == 1  # only the first resolution; refreshes were unicast
    assert a.counters.arp_requests_out > 1
    assert a.arp.pending_hops() == {}
    got = [b.udp_recvfrom(hb) for _ in range(40)]
    assert all(item is not None for item in got)
    assert b.counters.udp_queue_drops == 0


def test_arp_pending_queue_bound_drops_oldest() -> None:
    net = make_network(a={"arp_queue_limit": 4})
    a, b = net.a.stack, net.b.stack
    ha, hb = a.udp_bind(5000), b.udp_bind(6000)
    for i in range(10):  # all before the first reply can arrive
        assert a.udp_sendto(ha, bytes([i]), IP_B, 6000, net.now)
    assert a.arp.pending_hops() == {ipv4(IP_B): 4}
    assert a.counters.arp_queue_drops == 6
    net.advance(0.1)
    got = []
    while (item := b.udp_recvfrom(hb)) is not None:
        got.append(item[0])
    assert got == [bytes([i]) for i in range(6, 10)]  # Linux drops the oldest


def test_arp_pending_next_hops_are_bounded() -> None:
    """Frames to many unresolved on-link hosts (say, SYN-ACKs to spoofed sources) cannot grow
    the pending table without bound: past the cache's size, new next hops are refused."""
    net = make_network()
    a = net.a.stack
    a.arp.max_entries = 8
    ha = a.udp_bind(5000)
    for host in range(20, 40):
        a.udp_sendto(ha, b"x", f"198.18.1.{host}", 9, net.now)
    assert len(a.arp.pending_hops()) == 8
    assert a.counters.arp_requests_out == 8 and a.counters.arp_queue_drops == 12


def test_arp_gives_up_after_retries() -> None:
    net = make_network(a={"arp_queue_limit": 3, "arp_max_requests": 3})
    a = net.a.stack
    ha = a.udp_bind(5000)
    for _ in range(5):
        a.udp_sendto(ha, b"void", "198.18.1.77", 1234, net.now)
    net.advance(0.5)
    assert a.counters.arp_requests_out == 1
    net.advance(5.0)
    assert a.counters.arp_requests_out == 3
    assert a.counters.arp_failed == 1
    assert a.counters.arp_unresolved_drops == 3 and a.counters.arp_queue_drops == 2
    assert a.arp.pending_hops() == {}
    assert a.next_timeout() is None
    # A later frame starts a fresh resolution.
    a.udp_sendto(ha, b"again", "198.18.1.77", 1234, net.now)
    net.advance(0.1)
    assert a.counters.arp_requests_out == 4


def test_gratuitous_arp_only_updates_known_peers() -> None:
    net = make_network(a={"gratuitous_arp": True})
    a, b = net.a.stack, net.b.stack
    net.advance(0.1)  # A announces itself at its first poll
    assert a.counters.arp_gratuitous_out == 1
    assert b.arp_table() == {}  # RFC 826: B did not know A, so it learns nothing
    assert b.counters.drops["arp:not-for-us"] == 1
    ha, _ = a.udp_bind(5000), b.udp_bind(6000)
    a.udp_sendto(ha, b"x", IP_B, 6000, net.now)
    net.advance(0.1)
    assert b.arp_table() == {IP_A: MAC_A.hex(":")}
    moved = bytes.fromhex("525400000099")  # A's address moves to another NIC and announces
    net.inject(net.b, arp_frame(moved, ipv4(IP_A), b"\xff" * 6, ipv4(IP_A), op=1))
    net.advance(0.1)
    assert b.arp_table() == {IP_A: moved.hex(":")}


def test_no_route_off_link_without_gateway() -> None:
    net = make_network()
    a = net.a.stack
    ha = a.udp_bind(0)
    assert not a.udp_sendto(ha, b"x", "10.1.2.3", 53, net.now)
    assert a.counters.drops["ipv4:no-route"] == 1
    with pytest.raises(OSError):
        a.tcp_connect("10.1.2.3", 80, net.now)


def test_gateway_is_the_next_hop_off_link() -> None:
    net = make_network(a={"gateway": IP_B})
    a, b = net.a.stack, net.b.stack
    ha = a.udp_bind(0)
    assert a.udp_sendto(ha, b"x", "10.1.2.3", 53, net.now)
    net.advance(0.1)
    assert a.arp_table() == {IP_B: MAC_B.hex(":")}  # resolved the gateway, not 10.1.2.3
    assert b.counters.drops["ipv4:not-for-us"] == 1  # B is no router


def test_lossy_link_udp_counts_match() -> None:
    net = make_network(LinkConfig(loss=0.2, corrupt=0.1), seed=3)
    a, b = net.a.stack, net.b.stack
    ha, hb = a.udp_bind(5000), b.udp_bind(6000)
    a.udp_sendto(ha, b"prime", IP_B, 6000, net.now)
    net.advance(5.0)
    for i in range(200):
        a.udp_sendto(ha, i.to_bytes(2, "big") * 100, IP_B, 6000, net.now)
        net.advance(0.001)
    net.advance(1.0)
    received = 0
    while (item := b.udp_recvfrom(hb)) is not None:
        data = item[0]
        assert data == data[:2] * (len(data) // 2)  # never a corrupted payload
        received += 1
    link = net.links[id(net.a)].stats
    assert 100 < received < 200
    assert b.counters.drops_total > 0  # corrupted frames were counted, by reason
    assert received + link.lost + b.counters.drops_total >= link.offered - a.counters.arp_in

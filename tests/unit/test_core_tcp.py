"""TCP through two NetStacks on the in-memory link: transfers, refusals, listeners, demux."""

from __future__ import annotations

import hashlib
import random

import pytest

from guest.stack.core import (
    Accepted,
    Closed,
    Connected,
    ConnectionFailed,
    PeerClosed,
    Readable,
    Reset,
    TsoFrame,
    Writable,
)
from guest.stack.tcp import TcpConfig
from guest.stack.wire.addr import ipv4
from guest.stack.wire.checksum import fold, pseudo_header_sum
from guest.stack.wire.icmp import UNREACH_PORT, Icmpv4Repr
from guest.stack.wire.ipv4 import PROTO_ICMP, Ipv4Repr
from guest.testing.stack_sim import IP_A, IP_B, LinkConfig, Network, StreamApp, make_network

MB = 1 << 20
FAST_CLOSE = TcpConfig(msl=0.5)


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def transfer(net: Network, up: bytes, down: bytes, limit: float = 600.0) -> tuple:
    """Client on A sends `up`, server on B sends `down`; both half-close; run to the end."""
    servers: list[StreamApp] = []

    def factory() -> StreamApp:
        servers.append(StreamApp(down))
        return servers[-1]

    net.b.serve(80, factory)
    client = StreamApp(up)
    net.a.connect(IP_B, 80, client)
    finished = net.run(
        until=limit,
        stop=lambda: (
            client.terminal is not None and bool(servers) and servers[0].terminal is not None
        ),
    )
    assert finished, f"transfer did not finish by t={net.now:.1f}"
    return client, servers[0]


def lossy(loss: float) -> LinkConfig:
    return LinkConfig(
        delay=0.002,
        bandwidth=200e6,
        loss=loss,
        reorder=0.03,
        duplicate=0.01,
        corrupt=loss / 4,
    )


@pytest.mark.parametrize(
    ("loss", "seed"), [(0.0, 5), (0.02, 5), (0.02, 6), (0.10, 7)], ids=["clean", "2%", "2%b", "10%"]
)
def test_bidirectional_transfer_is_byte_identical(loss: float, seed: int) -> None:
    up, down = payload(3 * MB, 1), payload(2 * MB, 2)
    lossy_link = loss > 0
    link = lossy(loss) if lossy_link else LinkConfig()
    net = make_network(link, link, seed=seed, tcp_config=FAST_CLOSE)
    net.capture = True
    client, server = transfer(net, up, down)
    assert sha(server.received) == sha(up)
    assert sha(client.received) == sha(down)
    assert type(client.terminal) is Closed and type(server.terminal) is Closed
    assert client.eof and server.eof
    a, b = net.a.stack, net.b.stack
    assert a.tcp.conns == {} and b.tcp.conns == {}  # both forgot the connection
    net.run(until=net.now + 1.0)
    assert a.next_timeout() is None and b.next_timeout() is None  # no timer left behind
    if lossy_link:
        assert net.links[id(net.a)].stats.lost > 0 and net.links[id(net.a)].stats.corrupted > 0
        assert any(k.endswith("bad-checksum") for k in a.counters.drops)
        assert any(k.endswith("bad-checksum") for k in b.counters.drops)
    else:
        assert a.counters.drops_total == b.counters.drops_total == 0
        # Full-sized segments: the MSS derived from the MTU (1460 less 12 bytes of timestamps).
        sizes = [len(f) for _, _, f in net.captured]
        assert max(sizes) == 1514
        assert sum(1 for n in sizes if n == 1514) >= (len(up) + len(down)) // 1448 - 2


def test_tso_frames_are_merged_and_segmented_identically() -> None:
    up = payload(2 * MB, 3)
    net = make_network(a={"tso_max_size": 64000}, tcp_config=FAST_CLOSE)
    net.capture = True
    _, server = transfer(net, up, b"")
    assert sha(server.received) == sha(up)
    tso = [f for _, st, f in net.captured if st is net.a.stack and len(f) > 1514]
    assert tso, "the sender never merged segments"
    assert max(len(f) for f in tso) <= 64000 + 14 + 20 + 32
    assert net.b.stack.counters.drops_total == 0


def test_tso_over_a_lossy_link() -> None:
    up, down = payload(2 * MB, 8), payload(1 * MB, 9)
    link = lossy(0.02)
    net = make_network(link, link, seed=4, tso_max_size=32000, tcp_config=FAST_CLOSE)
    client, server = transfer(net, up, down)
    assert sha(server.received) == sha(up) and sha(client.received) == sha(down)


def test_tso_frame_carries_mss() -> None:
    net = make_network(a={"tso_max_size": 30000})
    frames: list = []
    orig = net._send

    def spy(host, out):  # type: ignore[no-untyped-def]
        frames.extend(out)
        orig(host, out)

    net._send = spy  # type: ignore[method-assign]
    transfer(net, payload(300_000, 4), b"", limit=100)
    big = [f for f in frames if type(f) is TsoFrame]
    assert big and all(f.mss == 1448 for f in big)
    assert all(len(f) - 66 <= 30000 for f in big)


def test_tso_super_segments_come_from_the_connection() -> None:
    """With TSO the connection itself emits new data in super-segments (TcpConfig.tso_size):
    a window's worth leaves as one frame, built once, not as MSS segments merged later."""
    net = make_network(a={"tso_max_size": 65455}, tcp_config=FAST_CLOSE)
    a = net.a.stack
    net.b.serve(80, StreamApp)
    h = a.tcp_connect(IP_B, 80, net.now)
    net.run(until=net.now + 2, stop=lambda: any(type(e) is Connected for e in net.a.log))
    before = a.socket_info(h)["stats"]["segments_out"]  # type: ignore[index]
    assert a.tcp_send(h, payload(100_000, 11)) == 100_000
    frames = a.poll(net.now)
    # The initial window (IW10) in one TSO frame, whole MSS multiples (a short tail would be
    # a silly-window segment on the wire).
    assert len(frames) == 1 and type(frames[0]) is TsoFrame
    assert len(frames[0]) - 66 == 10 * 1448 and frames[0].mss == 1448
    assert a.socket_info(h)["stats"]["segments_out"] == before + 1  # type: ignore[index]
    # That frame is never delivered (taken out of the simulator): the data goes again by
    # retransmission, MSS by MSS, and all of it is acknowledged.
    net.run(
        until=net.now + 10,
        stop=lambda: net.a.stack.socket_info(h)["stats"]["bytes_acked"] == 100_000,
    )  # type: ignore[index]
    assert a.socket_info(h)["stats"]["bytes_acked"] == 100_000  # type: ignore[index]


def test_tcp_totals_survive_the_connection() -> None:
    """Stack-wide TCP counters (for reports) include connections that already closed."""
    link = lossy(0.03)
    net = make_network(link, link, seed=3, tcp_config=FAST_CLOSE)
    up = payload(1 * MB, 12)
    _, server = transfer(net, up, b"")
    assert sha(server.received) == sha(up)
    net.run(until=net.now + 5)
    a = net.a.stack
    assert a.stats()["tcp_connections"] == 0
    totals = a.stats()
    assert totals["tcp.bytes_acked"] == len(up)
    assert totals["tcp.retransmits_fast"] + totals["tcp.retransmits_timeout"] > 0
    assert totals["tcp.bytes_retransmitted"] < len(up) // 5


def test_tcp_lingering_counts_unfinished_closes() -> None:
    net = make_network(tcp_config=FAST_CLOSE)
    a = net.a.stack
    assert a.tcp_lingering() == 0
    h = a.tcp_connect(IP_B, 80, net.now)  # nobody listens: the attempt lingers, then resets
    assert a.tcp_lingering() == 1
    net.run(until=net.now + 2, stop=lambda: bool(net.a.log))
    a.tcp_close(h)
    assert a.tcp_lingering() == 0


def test_connect_to_closed_port_is_reset() -> None:
    net = make_network()
    a, b = net.a.stack, net.b.stack
    h = a.tcp_connect(IP_B, 81, net.now)
    net.run(until=5.0, stop=lambda: bool(net.a.log))
    assert net.a.log == [Reset(h)]
    assert b.counters.tcp_resets_out == 1 and b.counters.drops["tcp:no-socket"] == 1
    assert a.socket_info(h)["state"] == "CLOSED"
    with pytest.raises(BrokenPipeError):
        a.tcp_send(h, b"x")
    a.tcp_close(h)
    with pytest.raises(OSError):
        a.socket_info(h)


def test_icmp_unreachable_fails_a_connection_attempt() -> None:
    # B's SYNs never arrive; a (forged) router answers the SYN with a port unreachable.
    net = make_network(LinkConfig(drop_if=lambda f: len(f) > 42 and f[23] == 6))
    net.capture = True
    a = net.a.stack
    h = a.tcp_connect(IP_B, 80, net.now)
    net.run(until=0.5)
    syn = next(f for _, st, f in net.captured if st is a and len(f) > 42 and f[23] == 6)
    quote = syn[14:]
    msg = Icmpv4Repr.dst_unreachable(UNREACH_PORT, quote)
    buf = bytearray(14 + 20 + msg.buffer_len())
    buf[0:14] = syn[6:12] + syn[0:6] + b"\x08\x00"
    Ipv4Repr(ipv4(IP_B), ipv4(IP_A), PROTO_ICMP, msg.buffer_len()).emit(buf, 14)
    msg.emit(buf, 34)
    net.inject(net.a, buf)
    net.run(until=1.0, stop=lambda: bool(net.a.log))
    assert net.a.log == [ConnectionFailed(h, "icmp unreachable")]


def test_listener_backlog_and_accept() -> None:
    """Without SYN cookies (Linux with tcp_syncookies=0) a full backlog drops SYNs, and the
    clients get in when they retransmit them."""
    net = make_network(b={"tcp_config": TcpConfig(syncookies=False)})
    a, b = net.a.stack, net.b.stack
    lh = b.tcp_listen(80, backlog=2)
    clients = [a.tcp_connect(IP_B, 80, net.now) for _ in range(4)]
    net.run(until=0.5)
    assert net.b.log.count(Accepted(lh)) == 2
    assert b.socket_info(lh)["pending"] == 2
    assert b.counters.tcp_listen_drops == 2
    connected = [ev.handle for ev in net.a.log if type(ev) is Connected]
    assert len(connected) == 2
    first = b.tcp_accept(lh)
    second = b.tcp_accept(lh)
    assert first is not None and second is not None and b.tcp_accept(lh) is None
    # The refused SYNs are retransmitted (after the 1 s initial RTO) and now fit.
    net.run(until=5.0)
    assert net.b.log.count(Accepted(lh)) == 4
    accepted = [b.tcp_accept(lh), b.tcp_accept(lh)]
    assert None not in accepted
    assert {ev.handle for ev in net.a.log if type(ev) is Connected} == set(clients)
    remotes = {b.socket_info(h)["remote"] for h in [first, second, *accepted]}
    assert len(remotes) == 4


def test_with_syn_cookies_a_full_backlog_answers_and_the_clients_data_gets_in() -> None:
    """With cookies (the default) the SYNs beyond the backlog are answered statelessly; the
    handshake completes from the cookie once the backlog has room for an established
    connection, and until then the client's first data (which repeats the cookie's ACK)
    is what brings it in."""
    net = make_network()
    a, b = net.a.stack, net.b.stack
    lh = b.tcp_listen(80, backlog=2)
    clients = [a.tcp_connect(IP_B, 80, net.now) for _ in range(4)]
    net.run(until=0.5)
    assert b.counters.tcp_syncookies_sent == 2
    assert b.counters.tcp_listen_drops == 2  # their ACKs: two established already wait
    first, second = b.tcp_accept(lh), b.tcp_accept(lh)
    assert first is not None and second is not None
    for h in clients[2:]:
        a.tcp_send(h, b"hello")
    net.run(until=2.0)
    late = [b.tcp_accept(lh), b.tcp_accept(lh)]
    assert None not in late
    assert b.counters.tcp_syncookies_validated == 2
    assert sorted(b.tcp_recv(h, 100) for h in late) == [b"hello", b"hello"]


def test_data_before_accept_is_replayed_to_the_new_handle() -> None:
    net = make_network()
    a, b = net.a.stack, net.b.stack
    lh = b.tcp_listen(80)
    h = a.tcp_connect(IP_B, 80, net.now)
    net.run(until=0.1)
    a.tcp_send(h, b"early bird")
    a.tcp_shutdown(h)
    net.run(until=0.2)
    h2 = b.tcp_accept(lh)
    assert h2 is not None
    net.run(until=0.3)
    assert Readable(h2) in net.b.log and PeerClosed(h2) in net.b.log
    assert b.tcp_recv(h2) == b"early bird"
    assert b.tcp_at_eof(h2)


def test_many_concurrent_connections_are_demultiplexed() -> None:
    net = make_network(LinkConfig(bandwidth=100e6, loss=0.01), seed=9, tcp_config=FAST_CLOSE)
    datas = [payload(30_000 + 1000 * i, 100 + i) for i in range(20)]
    servers: list[StreamApp] = []

    def factory() -> StreamApp:
        servers.append(StreamApp(b"reply"))
        return servers[-1]

    net.b.serve(80, factory)
    clients = [StreamApp(d, write_size=4096) for d in datas]
    for app in clients:
        net.a.connect(IP_B, 80, app)
    done = net.run(
        until=300,
        stop=lambda: (
            len(servers) == 20
            and all(c.terminal and s.terminal for c, s in zip(clients, servers, strict=True))
        ),
    )
    assert done
    assert sorted(sha(s.received) for s in servers) == sorted(sha(d) for d in datas)
    assert all(bytes(c.received) == b"reply" for c in clients)
    assert len({c.handle for c in clients}) == 20
    assert net.b.stack.counters.tcp_connections_accepted == 20


def test_send_buffer_backpressure_gives_writable() -> None:
    cfg = TcpConfig(send_buffer_size=64 * 1024, msl=0.5)
    net = make_network(tcp_config=cfg)
    client, server = transfer(net, payload(1 * MB, 6), b"", limit=60)
    assert sha(server.received) == sha(payload(1 * MB, 6))
    assert any(type(ev) is Writable for ev in client.events)


def test_close_with_unread_data_resets_the_peer() -> None:
    net = make_network()
    a, b = net.a.stack, net.b.stack
    lh = b.tcp_listen(80)
    h = a.tcp_connect(IP_B, 80, net.now)
    net.run(until=0.1)
    h2 = b.tcp_accept(lh)
    a.tcp_send(h, b"unread")
    net.run(until=0.2)
    b.tcp_close(h2)  # with 6 bytes unread: RST, as Linux does
    net.run(until=0.3)
    assert Reset(h) in net.a.log


def test_orphan_in_fin_wait_2_is_cut_after_fin_timeout() -> None:
    net = make_network(a={"fin_timeout": 5.0})
    a, b = net.a.stack, net.b.stack
    lh = b.tcp_listen(80)
    h = a.tcp_connect(IP_B, 80, net.now)
    net.run(until=0.1)
    h2 = b.tcp_accept(lh)
    a.tcp_close(h)  # B never closes its side
    net.run(until=1.0)
    assert len(a.tcp.conns) == 1  # FIN-WAIT-2 orphan
    net.run(until=7.0)
    assert a.tcp.conns == {}
    assert Reset(h2) in net.b.log


def test_socket_info_reports_negotiation_and_stats() -> None:
    net = make_network(mtu=9000)
    client, _ = transfer(net, payload(200_000, 7), b"", limit=100)
    a = net.a.stack
    lh = next(iter(net.b.servers))
    assert net.b.stack.socket_info(lh)["kind"] == "tcp-listener"
    info = a.socket_info(client.handle)
    assert info["kind"] == "tcp" and info["remote"] == f"{IP_B}:80"
    neg = info["negotiated"]
    assert neg["send_mss"] == 8960 and neg["timestamps"] and neg["sack"]
    assert info["stats"]["bytes_acked"] == 200_000


def test_tx_checksum_offload_leaves_the_seed_for_the_device() -> None:
    net = make_network(tx_checksum_offload=True, a={"tso_max_size": 16000}, tcp_config=FAST_CLOSE)
    net.capture = True
    up, down = payload(500_000, 10), payload(200_000, 11)
    client, server = transfer(net, up, down)
    assert sha(server.received) == sha(up) and sha(client.received) == sha(down)
    assert net.a.stack.counters.drops_total == net.b.stack.counters.drops_total == 0
    tcp_frames = [f for _, _, f in net.captured if f[23] == 6]
    assert tcp_frames
    for f in tcp_frames:
        ip = Ipv4Repr.parse(f[14:])  # the IPv4 header checksum is always complete
        seed = fold(pseudo_header_sum(ip.src_addr, ip.dst_addr, 6, ip.payload_len))
        assert int.from_bytes(f[50:52], "big") == seed
    udp_a, udp_b = net.a.stack.udp_bind(0), net.b.stack.udp_bind(53)
    net.a.stack.udp_sendto(udp_a, b"offloaded", IP_B, 53, net.now)
    net.a.stack.udp_sendto(udp_a, b"f" * 4000, IP_B, 53, net.now)  # fragments: full checksum
    net.run(until=net.now + 1.0)
    assert net.b.stack.udp_recvfrom(udp_b)[0] == b"offloaded"
    assert net.b.stack.udp_recvfrom(udp_b)[0] == b"f" * 4000

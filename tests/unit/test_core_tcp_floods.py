"""Spoofed segments against a stack (RFC 5961 section 7): what it sends in answer stays
within its rate limits, and a live connection rides the flood out byte-exact."""

from __future__ import annotations

import hashlib
import random

import pytest

from guest.stack.core import ConnectionFailed, Reset
from guest.stack.tcp import TcpConfig
from guest.stack.wire.addr import ipv4
from guest.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.frame import emit_tcp_frame, tcp_payload_offset
from guest.stack.wire.ipv4 import PROTO_TCP, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr
from guest.testing.stack_sim import (
    IP_A,
    IP_B,
    MAC_A,
    MAC_B,
    LinkConfig,
    StreamApp,
    make_network,
)


def _frame(src_port: int, dst_port: int, seq: int, ack: int, flags: TcpFlags) -> bytes:
    """A segment from A's address to B, as anyone on the link could forge it."""
    tcp = TcpRepr(src_port=src_port, dst_port=dst_port, seq=seq, ack=ack, flags=flags, window=512)
    buf = bytearray(tcp_payload_offset(tcp))
    ip = Ipv4Repr(ipv4(IP_A), ipv4(IP_B), PROTO_TCP, tcp.header_len())
    emit_tcp_frame(buf, EthernetRepr(MAC_A, MAC_B, ETHERTYPE_IPV4), ip, tcp, 0)
    return bytes(buf)


def test_stray_acks_draw_resets_only_within_the_stack_wide_bound() -> None:
    net = make_network()
    rng = random.Random(1)
    for k in range(3000):  # all in the same instant: the burst allowance, no more
        frame = _frame(2000 + k, 81, rng.getrandbits(32), rng.getrandbits(32), TcpFlags.ACK)
        net.inject(net.b, frame)
    net.advance(0.001)
    c = net.b.stack.counters
    assert c.tcp_resets_out == 50 and c.tcp_resets_rate_limited == 2950
    for k in range(3000):  # then spread over 1.5 s: about 1000 per second get an answer
        frame = _frame(9000 + k, 81, rng.getrandbits(32), rng.getrandbits(32), TcpFlags.ACK)
        net.inject(net.b, frame, delay=k * 0.0005)
    net.advance(2.0)
    assert 50 + 1400 <= c.tcp_resets_out <= 50 + 1550


@pytest.mark.parametrize("limited", [True, False])
def test_a_live_connection_survives_spoofed_resets_and_acks(limited: bool) -> None:
    """While 4000 forged RSTs and ACKs hit its 4-tuple over two seconds, in its receive
    window (so the checks of RFC 5961 are what stops them: an RST that is not exact, an ACK
    of data never sent), a 2 MB transfer completes byte-exact and the connection answers
    them with no more challenge ACKs than the limit allows per second. With the limits
    lifted (the control) it answers most of them."""
    config = TcpConfig() if limited else TcpConfig(challenge_ack_limit=10**9)
    slow = LinkConfig(delay=0.001, bandwidth=10e6)  # 1.6 s for the transfer
    net = make_network(slow, LinkConfig(delay=0.001), b={"tcp_config": config})
    data = random.Random(2).randbytes(2_000_000)
    servers: list[StreamApp] = []

    def factory() -> StreamApp:
        servers.append(StreamApp(b""))
        return servers[-1]

    net.b.serve(80, factory)
    client = StreamApp(data, write_size=16384)
    handle = net.a.connect(IP_B, 80, client)
    net.advance(0.01)
    port = int(net.a.stack.socket_info(handle)["local"].rsplit(":", 1)[1])
    (target,) = (s.conn for s in net.b.stack.tcp.conns.values())
    rng = random.Random(3)
    for step in range(200):  # 20 forged segments every 10 ms, aimed inside the window
        for k in range(20):
            seq = target.rcv_nxt + 1 + rng.randrange(8192)
            if k % 2:
                frame = _frame(port, 80, seq, 0, TcpFlags.RST)
            else:
                frame = _frame(
                    port, 80, seq, target.snd_max + 1 + rng.randrange(10**6), TcpFlags.ACK
                )
            net.inject(net.b, frame)
        net.advance(0.01)
        if step == 0:
            assert not servers[0].eof  # the flood overlaps the transfer
    net.run(until=60.0, stop=lambda: bool(servers) and servers[0].eof)
    server = servers[0]
    assert server.eof and not isinstance(client.terminal, Reset | ConnectionFailed)
    assert hashlib.sha256(server.received).digest() == hashlib.sha256(data).digest()
    challenges = net.b.stack.tcp.totals()["challenge_acks"]
    if limited:
        assert 0 < challenges <= 10 * 3  # 10 per second, over a flood of 2 s
    else:
        assert challenges >= 1000  # most of them answered

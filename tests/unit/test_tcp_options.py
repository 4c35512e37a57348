"""Option negotiation and use: MSS, window scaling, timestamps/PAWS, SACK."""

from __future__ import annotations

from guest.stack.tcp import TcpConfig, TcpState
from guest.stack.tcp.options import window_shift_for
from tests.unit.tcp_helpers import (
    CLIENT_ISN,
    SERVER_ISN,
    Pair,
    client,
    letters,
    open_client,
    open_server,
    seg,
)

NO_OPTS = {"timestamps": False, "sack": False, "delayed_ack": False}


def test_window_shift_choice() -> None:
    assert window_shift_for(65535) == 0
    assert window_shift_for(65536) == 1
    assert window_shift_for(256 * 1024) == 3
    assert window_shift_for(1 << 20) == 5
    assert window_shift_for(1 << 40) == 14


def test_window_scaling_negotiated() -> None:
    cfg = TcpConfig(recv_buffer_size=1 << 20, **NO_OPTS)
    c = open_client(cfg, window=1000, window_scale=5)
    assert c.snd_wnd == 1000  # the SYN-ACK's window is never scaled
    c.receive_segment(seg(SERVER_ISN + 1, CLIENT_ISN + 1, window=1000), 0.01)
    assert c.snd_wnd == 1000 << 5
    c.send(b"x")
    (data,) = c.poll(0.01)
    assert data.window == (1 << 20) >> 5


def test_window_scaling_not_negotiated_when_peer_omits_it() -> None:
    cfg = TcpConfig(recv_buffer_size=1 << 20, **NO_OPTS)
    c = open_client(cfg, window=1000)
    assert c.negotiated["window_scaling"] is False
    c.receive_segment(seg(SERVER_ISN + 1, CLIENT_ISN + 1, window=1000), 0.01)
    assert c.snd_wnd == 1000
    c.send(b"x")
    (data,) = c.poll(0.01)
    assert data.window == 65535  # unscaled and capped


def test_window_scaling_not_offered_when_disabled() -> None:
    c = client(TcpConfig(window_scaling=False))
    c.connect()
    (syn,) = c.poll(0.0)
    assert syn.window_scale is None


def test_peer_shift_capped_at_14() -> None:
    c = open_client(TcpConfig(**NO_OPTS), window_scale=20)
    assert c.negotiated["snd_wscale"] == 14


def test_mss_clamp() -> None:
    big = open_client(TcpConfig(mss=1460, **NO_OPTS), mss=9000)
    small = open_client(TcpConfig(mss=1460, **NO_OPTS), mss=700)
    assert big.mss == 1460 and small.mss == 700
    c = client(TcpConfig(mss=1460, **NO_OPTS))
    c.connect()
    c.poll(0.0)
    c.receive_segment(seg(SERVER_ISN, CLIENT_ISN + 1, "SA"), 0.0)  # no MSS option
    assert c.mss == 536
    small.send(bytes(2000))
    assert [len(s.payload) for s in small.poll(0.0)] == [700, 700, 600]


def test_timestamps_reduce_payload_and_echo_ts_recent() -> None:
    cfg = TcpConfig(sack=False, delayed_ack=False)
    c = open_client(cfg, mss=1460, timestamp=(4242, 0))
    assert c.mss == 1448
    c.send(b"x")
    (data,) = c.poll(2.5)
    assert data.timestamp == (2500, 4242)
    # A newer in-order segment updates TS.Recent.
    c.receive_segment(seg(SERVER_ISN + 1, CLIENT_ISN + 2, timestamp=(5000, 2500)), 2.6)
    c.send(b"y")
    (data,) = c.poll(2.7)
    assert data.timestamp == (2700, 5000)


def test_timestamp_offset_is_added() -> None:
    from guest.stack.tcp import TcpConnection
    from tests.unit.tcp_helpers import CLIENT, SERVER

    c = TcpConnection(CLIENT, SERVER, TcpConfig(), isn=1, ts_offset=0xFFFFFFF0)
    c.connect()
    (syn,) = c.poll(1.0)
    assert syn.timestamp == ((1000 + 0xFFFFFFF0) & 0xFFFFFFFF, 0)


def test_paws_rejects_old_timestamps() -> None:
    cfg = TcpConfig(sack=False, delayed_ack=False)
    s = open_server(cfg, timestamp=(1000, 0))
    s.receive_segment(
        seg(CLIENT_ISN + 1, SERVER_ISN + 1, payload=b"new", timestamp=(2000, 0), src=40000, dst=80),
        1.0,
    )
    assert s.recv() == b"new"
    s.poll(1.0)
    # Same sequence space, older TSval: an old duplicate from a previous incarnation.
    s.receive_segment(
        seg(CLIENT_ISN + 4, SERVER_ISN + 1, payload=b"old", timestamp=(1500, 0), src=40000, dst=80),
        1.1,
    )
    assert s.recv() == b""
    assert s.stats.unacceptable_in == 1
    (ack,) = s.poll(1.1)
    assert letters(ack) == "A"


def test_segments_without_timestamps_are_dropped_once_negotiated() -> None:
    cfg = TcpConfig(sack=False, delayed_ack=False)
    s = open_server(cfg, timestamp=(1000, 0))
    s.receive_segment(seg(CLIENT_ISN + 1, SERVER_ISN + 1, payload=b"x", src=40000, dst=80), 1.0)
    assert s.recv() == b""
    # An RST without timestamps is still processed (RFC 7323 section 3.2).
    s.receive_segment(seg(CLIENT_ISN + 1, 0, "R", src=40000, dst=80), 1.0)
    assert s.state is TcpState.CLOSED


def test_sack_blocks_on_out_of_order_data() -> None:
    cfg = TcpConfig(timestamps=False, delayed_ack=False)
    c = open_client(cfg, sack_permitted=True)
    base = SERVER_ISN + 1
    c.receive_segment(seg(base + 100, CLIENT_ISN + 1, payload=b"b" * 100), 0.0)
    c.receive_segment(seg(base + 300, CLIENT_ISN + 1, payload=b"d" * 100), 0.0)
    (ack,) = c.poll(0.0)
    assert ack.ack == base
    assert ack.sack_blocks == ((base + 300, base + 400), (base + 100, base + 200))
    assert c.stats.out_of_order_in == 2
    c.receive_segment(seg(base, CLIENT_ISN + 1, payload=b"a" * 100), 0.0)
    (ack,) = c.poll(0.0)
    assert ack.ack == base + 200
    assert ack.sack_blocks == ((base + 300, base + 400),)


def test_no_sack_blocks_without_negotiation() -> None:
    cfg = TcpConfig(timestamps=False, delayed_ack=False)
    c = open_client(cfg)
    c.receive_segment(seg(SERVER_ISN + 101, CLIENT_ISN + 1, payload=b"x" * 10), 0.0)
    (ack,) = c.poll(0.0)
    assert ack.sack_blocks == ()


def test_at_most_three_sack_blocks_with_timestamps() -> None:
    cfg = TcpConfig(delayed_ack=False)
    c = open_client(cfg, sack_permitted=True, timestamp=(1, 0))
    base = SERVER_ISN + 1
    for i in range(5):
        c.receive_segment(
            seg(base + 100 + 200 * i, CLIENT_ISN + 1, payload=b"x" * 100, timestamp=(2, 0)), 0.0
        )
    (ack,) = c.poll(0.0)
    assert len(ack.sack_blocks) == 3
    assert ack.sack_blocks[0] == (base + 900, base + 1000)


def test_retransmission_skips_sacked_data() -> None:
    """After a timeout the go-back-N resend skips what the peer SACKed (RFC 6675 5.1)."""
    cfg = TcpConfig(timestamps=False, delayed_ack=False, mss=1000)
    c = open_client(cfg, sack_permitted=True)
    una = CLIENT_ISN + 1
    c.send(bytes(5000))
    assert len(c.poll(0.0)) == 5
    # Segments 2 and 4 arrived, 1, 3 and 5 were lost.
    c.receive_segment(
        seg(SERVER_ISN + 1, una, sack_blocks=((una + 1000, una + 2000), (una + 3000, una + 4000))),
        0.05,
    )
    c.poll(0.05)
    t = c.next_timeout()
    assert t is not None
    sent: list[int] = []
    now = t
    for _ in range(10):
        for s in c.poll(now):
            sent.append(s.seq - una)
            # The peer acknowledges each resent hole, keeping its SACK blocks.
            c.receive_segment(seg(SERVER_ISN + 1, s.seq + len(s.payload)), now + 0.01)
        now += 0.02
        if c.snd_una == una + 5000:
            break
    assert sent == [0, 2000, 4000]


def test_options_negotiated_between_two_connections() -> None:
    p = Pair(TcpConfig(), TcpConfig(window_scaling=False, sack=False))
    p.handshake()
    assert p.a.negotiated == p.a.negotiated | {"sack": False, "window_scaling": False}
    assert p.b.negotiated["timestamps"] and p.a.negotiated["timestamps"]

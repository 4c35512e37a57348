"""Flow control and timers: delayed ACKs, zero window and persist, SWS, Nagle, keep-alive."""

from __future__ import annotations

import itertools

import pytest

from guest.stack.tcp import TcpConfig, TcpConnectionFailed, TcpSendSpaceAvailable
from tests.unit.tcp_helpers import (
    CLIENT_ISN,
    SERVER_ISN,
    Pair,
    letters,
    open_client,
    seg,
)

DELACK = TcpConfig(timestamps=False, sack=False, window_scaling=False, mss=1000)
UNA = CLIENT_ISN + 1
BASE = SERVER_ISN + 1


def test_delayed_ack_timer() -> None:
    c = open_client(DELACK)
    c.receive_segment(seg(BASE, UNA, payload=b"x" * 1000), 1.0)
    assert c.poll(1.0) == []
    assert c.next_timeout() == pytest.approx(1.04)
    assert c.poll(1.039) == []
    (ack,) = c.poll(1.04)
    assert letters(ack) == "A" and ack.ack == BASE + 1000
    assert c.next_timeout() is None


def test_every_second_full_segment_is_acked_at_once() -> None:
    c = open_client(DELACK)
    c.receive_segment(seg(BASE, UNA, payload=b"x" * 1000), 1.0)
    c.receive_segment(seg(BASE + 1000, UNA, payload=b"x" * 1000), 1.0)
    (ack,) = c.poll(1.0)
    assert ack.ack == BASE + 2000


def test_out_of_order_segment_is_acked_at_once() -> None:
    c = open_client(DELACK)
    c.receive_segment(seg(BASE + 1000, UNA, payload=b"x" * 1000), 1.0)
    (ack,) = c.poll(1.0)
    assert ack.ack == BASE
    # The segment filling the gap is acknowledged at once too (RFC 5681 section 4.2).
    c.receive_segment(seg(BASE, UNA, payload=b"x" * 1000), 1.01)
    (ack,) = c.poll(1.01)
    assert ack.ack == BASE + 2000


def test_quickack_on_psh_when_configured() -> None:
    c = open_client(TcpConfig(timestamps=False, sack=False, quickack_on_psh=True))
    c.receive_segment(seg(BASE, UNA, "AP", payload=b"req"), 1.0)
    assert len(c.poll(1.0)) == 1


def test_data_piggybacks_the_delayed_ack() -> None:
    c = open_client(DELACK)
    c.receive_segment(seg(BASE, UNA, "AP", payload=b"request"), 1.0)
    c.send(b"response")
    (s,) = c.poll(1.001)
    assert s.payload == b"response" and s.ack == BASE + 7
    assert c.next_timeout() != pytest.approx(1.04)


def test_zero_window_persist_probes_with_backoff_then_resume() -> None:
    cfg = TcpConfig(timestamps=False, sack=False, window_scaling=False, mss=1000, max_rto=10.0)
    c = open_client(cfg, window=2000)
    c.send(bytes(5000))
    out = c.poll(0.0)
    assert [len(s.payload) for s in out] == [1000, 1000]
    # The peer takes both segments but its application reads nothing: window 0.
    c.receive_segment(seg(BASE, UNA + 2000, window=0), 0.05)
    assert c.poll(0.05) == []
    probes = []
    now = 0.05
    for _ in range(4):
        t = c.next_timeout()
        assert t is not None
        now = t
        out = c.poll(now)
        assert len(out) == 1 and out[0].payload == b""
        assert out[0].seq == (UNA + 2000 - 1)  # old sequence number: forces an ACK
        probes.append(now)
        c.receive_segment(seg(BASE, UNA + 2000, window=0), now + 0.01)
        assert c.poll(now + 0.01) == []
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps[1] == pytest.approx(2 * gaps[0]) and gaps[2] == pytest.approx(2 * gaps[1])
    assert c.stats.window_probes == 4
    # Window update: transmission resumes.
    c.receive_segment(seg(BASE, UNA + 2000, window=3000), now + 0.02)
    out = c.poll(now + 0.02)
    assert [len(s.payload) for s in out] == [1000, 1000, 1000]


def test_lost_window_update_is_recovered_by_a_probe() -> None:
    """Receiver and sender as a pair: the receiver's window opens, its update is lost, and
    the sender's persist probe elicits the new window."""
    cfg = TcpConfig(timestamps=False, sack=False, recv_buffer_size=4000, mss=1000)
    p = Pair(cfg)
    p.handshake()
    p.a.send(bytes(10000))
    p.flush()
    assert p.b.recv_available == 4000 and p.a.snd_wnd == 0
    assert p.b.recv() == bytes(4000)
    lost = p.b.poll(p.now)  # the window update...
    assert lost and lost[0].window > 0  # ...is dropped here
    t = p.a.next_timeout()
    assert t is not None
    p.now = t
    p.flush()  # probe -> ACK with the open window -> data
    assert p.b.recv_available == 4000
    assert p.a.stats.window_probes == 1


def test_receiver_window_update_after_read() -> None:
    cfg = TcpConfig(timestamps=False, sack=False, window_scaling=False, recv_buffer_size=4000)
    c = open_client(cfg)
    c.receive_segment(seg(BASE, UNA, payload=bytes(4000)), 1.0)
    (ack,) = c.poll(1.0)
    assert ack.window == 0
    c.recv(500)  # less than the SWS threshold min(buffer/2, MSS) = min(2000, 1460)
    assert c.poll(1.0) == []
    c.recv(2000)
    (update,) = c.poll(1.0)
    assert update.window == 2500


def test_receiver_sws_never_shrinks_the_window() -> None:
    cfg = TcpConfig(
        timestamps=False,
        sack=False,
        window_scaling=False,
        recv_buffer_size=10000,
        mss=1000,
        delayed_ack=False,
    )
    c = open_client(cfg)
    right_edges = []
    seq = BASE
    for size in (3000, 100, 2500, 700, 3000):
        c.receive_segment(seg(seq, UNA, payload=bytes(size)), 1.0)
        seq += size
        (ack,) = c.poll(1.0)
        right_edges.append(ack.ack + ack.window)
        c.recv(size // 2)
    assert right_edges == sorted(right_edges)


def test_sender_sws_avoidance_holds_small_segments() -> None:
    cfg = TcpConfig(timestamps=False, sack=False, window_scaling=False, mss=1000)
    c = open_client(cfg, window=4000)
    c.send(bytes(10000))
    out = c.poll(0.0)
    assert [len(s.payload) for s in out] == [1000] * 4
    # 300 bytes of window open up while 3000 are in flight: too small to use (max window 4000).
    c.receive_segment(seg(BASE, UNA + 300, window=4000), 0.05)
    assert c.poll(0.05) == []
    # Once at least a full segment fits, it is sent.
    c.receive_segment(seg(BASE, UNA + 1000, window=4000), 0.06)
    assert [len(s.payload) for s in c.poll(0.06)] == [1000]


def test_nagle_when_nodelay_is_off() -> None:
    c = open_client(TcpConfig(timestamps=False, sack=False, nodelay=False))
    c.send(b"a" * 10)
    assert len(c.poll(0.0)) == 1
    c.send(b"b" * 10)
    c.send(b"c" * 10)
    assert c.poll(0.0) == []  # small segment while data is unacknowledged
    c.receive_segment(seg(BASE, UNA + 10), 0.05)
    (s,) = c.poll(0.05)
    assert s.payload == b"b" * 10 + b"c" * 10


def test_nodelay_sends_small_segments_immediately() -> None:
    c = open_client(TcpConfig(timestamps=False, sack=False))
    c.send(b"a" * 10)
    c.send(b"b" * 10)
    assert len(c.poll(0.0)) == 1
    c.send(b"c" * 10)
    assert len(c.poll(0.0)) == 1


def test_send_buffer_backpressure_event() -> None:
    cfg = TcpConfig(timestamps=False, sack=False, send_buffer_size=3000, mss=1000)
    c = open_client(cfg)
    assert c.send(bytes(5000)) == 3000
    assert c.send_space == 0
    c.poll(0.0)
    c.receive_segment(seg(BASE, UNA + 1000), 0.05)
    assert c.events() == [TcpSendSpaceAvailable(1000)]
    assert c.send(bytes(5000)) == 1000


def test_keepalive_probes_then_gives_up() -> None:
    cfg = TcpConfig(
        timestamps=False,
        sack=False,
        keepalive_idle=10.0,
        keepalive_interval=1.0,
        keepalive_probes=3,
    )
    c = open_client(cfg)
    assert c.next_timeout() == pytest.approx(10.0)
    (probe,) = c.poll(10.0)
    assert probe.seq == UNA - 1 and probe.payload == b""
    c.receive_segment(seg(BASE, UNA), 10.5)  # answered: idle timer starts over
    assert c.next_timeout() == pytest.approx(20.5)
    now = 20.5
    for _ in range(3):
        assert len(c.poll(now)) == 1
        now = c.next_timeout()
    (rst,) = c.poll(now)
    assert letters(rst) == "R"
    assert c.events() == [TcpConnectionFailed("connection timed out (keep-alive)")]


def test_keepalive_off_by_default() -> None:
    c = open_client()
    assert c.next_timeout() is None

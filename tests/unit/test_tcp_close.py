"""Closing connections: active/passive close, simultaneous close, half-close, TIME-WAIT."""

from __future__ import annotations

import pytest

from guest.stack.tcp import TcpClosed, TcpConfig, TcpPeerClosed, TcpReset, TcpState, TcpStateError
from tests.unit.tcp_helpers import PLAIN, SERVER_ISN, Pair, letters, open_client, seg

MSL = 30.0


def established(config: TcpConfig = PLAIN) -> Pair:
    p = Pair(config)
    p.handshake()
    p.events()
    return p


def test_active_and_passive_close_through_time_wait() -> None:
    p = established()
    p.a.close()
    assert p.a.state is TcpState.FIN_WAIT_1
    p.flush()
    assert p.a.state is TcpState.FIN_WAIT_2
    assert p.b.state is TcpState.CLOSE_WAIT
    assert p.b.events() == [TcpPeerClosed()] and p.b.at_eof
    p.b.close()
    assert p.b.state is TcpState.LAST_ACK
    p.flush()
    assert p.b.state is TcpState.CLOSED and p.b.events() == [TcpClosed()]
    assert p.a.state is TcpState.TIME_WAIT
    assert p.a.events() == [TcpPeerClosed()]
    assert p.a.next_timeout() == pytest.approx(p.now + 2 * MSL)
    p.advance(2 * MSL - 0.001)
    assert p.a.state is TcpState.TIME_WAIT
    p.advance(0.001)
    assert p.a.state is TcpState.CLOSED and p.a.events() == [TcpClosed()]
    assert p.a.next_timeout() is None


def test_msl_is_configurable() -> None:
    p = established(TcpConfig(timestamps=False, sack=False, msl=0.5))
    p.a.close()
    p.flush()
    p.b.close()
    p.flush()
    assert p.a.next_timeout() == pytest.approx(p.now + 1.0)


def test_simultaneous_close() -> None:
    p = established()
    p.a.close()
    p.b.close()
    (fin_a,) = p.a.poll(0.0)
    (fin_b,) = p.b.poll(0.0)
    assert letters(fin_a) == "AF" and letters(fin_b) == "AF"
    p.a.receive_segment(fin_b, 0.01)
    p.b.receive_segment(fin_a, 0.01)
    assert p.a.state is TcpState.CLOSING and p.b.state is TcpState.CLOSING
    p.now = 0.01
    p.flush()
    assert p.a.state is TcpState.TIME_WAIT and p.b.state is TcpState.TIME_WAIT


def test_fin_wait_1_straight_to_time_wait_on_fin_ack() -> None:
    p = established()
    p.a.close()
    (fin_a,) = p.a.poll(0.0)
    p.b.receive_segment(fin_a, 0.0)
    p.b.close()
    (fin_ack,) = p.b.poll(0.0)  # ACK of a's FIN and b's FIN in one segment
    assert letters(fin_ack) == "AF"
    p.a.receive_segment(fin_ack, 0.0)
    assert p.a.state is TcpState.TIME_WAIT


def test_half_close_data_after_fin() -> None:
    p = established()
    p.a.close()
    p.flush()
    assert p.a.state is TcpState.FIN_WAIT_2
    with pytest.raises(TcpStateError):
        p.a.send(b"no more")
    p.b.send(b"late reply")
    p.flush()
    assert p.a.recv() == b"late reply"
    p.b.send(b" and more")
    p.b.close()
    p.flush()
    assert p.a.recv() == b" and more"
    assert p.a.at_eof and p.a.state is TcpState.TIME_WAIT


def test_fin_piggybacks_on_last_data_segment() -> None:
    p = established()
    p.a.send(b"bye")
    p.a.close()
    (s,) = p.a.poll(0.0)
    assert letters(s) == "AFP" and s.payload == b"bye"


def test_lost_fin_is_retransmitted() -> None:
    p = established()
    p.a.close()
    (fin,) = p.a.poll(0.0)
    t = p.a.next_timeout()
    assert t is not None
    (again,) = p.a.poll(t)
    assert letters(again) == "AF" and again.seq == fin.seq
    assert p.a.stats.retransmits_timeout == 1


def test_time_wait_reacknowledges_retransmitted_fin_and_restarts_timer() -> None:
    p = established()
    p.a.close()
    p.flush()
    p.b.close()
    (fin_b,) = p.b.poll(p.now)
    p.a.receive_segment(fin_b, p.now)
    p.a.poll(p.now)  # its ACK is "lost"
    assert p.a.state is TcpState.TIME_WAIT
    later = p.now + 10.0
    p.a.receive_segment(fin_b, later)
    (ack,) = p.a.poll(later)
    assert letters(ack) == "A" and ack.ack == fin_b.seq + 1
    assert p.a.next_timeout() == pytest.approx(later + 2 * MSL)


def test_out_of_order_fin_waits_for_the_data_before_it() -> None:
    c = open_client()
    base = SERVER_ISN + 1
    c.receive_segment(seg(base + 5, c.snd_nxt, "AF", payload=b"world"), 0.0)
    assert c.state is TcpState.ESTABLISHED and c.events() == []
    c.receive_segment(seg(base, c.snd_nxt, "A", payload=b"hello"), 0.0)
    assert c.recv() == b"helloworld"
    assert c.state is TcpState.CLOSE_WAIT
    assert [type(e).__name__ for e in c.events()] == ["TcpDataReceived", "TcpPeerClosed"]


def test_abort_sends_rst_and_peer_sees_reset() -> None:
    p = established()
    p.a.abort()
    assert p.a.state is TcpState.CLOSED and p.a.events() == [TcpClosed()]
    (rst,) = p.a.poll(0.0)
    assert letters(rst) == "R" and rst.seq == p.a.snd_nxt
    p.b.receive_segment(rst, 0.0)
    assert p.b.events() == [TcpReset()]
    assert p.a.poll(1.0) == []


def test_closed_connection_answers_with_reset() -> None:
    p = established()
    p.a.abort()
    p.a.poll(0.0)
    p.a.receive_segment(seg(SERVER_ISN + 1, 1, "A", payload=b"x"), 0.1)
    (rst,) = p.a.poll(0.1)
    assert letters(rst) == "R" and rst.seq == 1

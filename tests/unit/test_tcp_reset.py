"""RST generation for strays (RFC 9293 3.10.7.1) and RST/SYN validation (RFC 5961)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from guest.stack.tcp import TcpClosed, TcpConfig, TcpConnection, TcpReset, TcpState, reset_for
from tests.unit.tcp_helpers import (
    CLIENT,
    CLIENT_ISN,
    PLAIN,
    SERVER,
    SERVER_ISN,
    Pair,
    letters,
    seg,
    to_server,
)


def test_reset_for_segment_without_ack() -> None:
    syn = to_server(1234, 0, "S")
    rst = reset_for(syn)
    assert rst is not None
    assert letters(rst) == "AR"
    assert (rst.seq, rst.ack) == (0, 1235)
    assert (rst.src_port, rst.dst_port) == (SERVER[1], CLIENT[1])
    data_fin = to_server(0xFFFFFFFF, 0, "F", payload=b"abc")
    rst = reset_for(data_fin)
    assert rst is not None and rst.ack == 3  # SEG.SEQ + SEG.LEN wraps


def test_reset_for_segment_with_ack() -> None:
    rst = reset_for(to_server(1, 777, "A", payload=b"x"))
    assert rst is not None and letters(rst) == "R"
    assert (rst.seq, rst.ack) == (777, 0)


def test_no_reset_for_reset() -> None:
    assert reset_for(to_server(1, 2, "RA")) is None


# -- RST in each state -------------------------------------------------------------------


def established() -> Pair:
    p = Pair()
    p.handshake()
    p.events()
    return p


def make_established() -> Pair:
    return established()


def make_fin_wait_1() -> Pair:
    p = established()
    p.a.close()
    p.a.poll(0.0)
    return p


def make_fin_wait_2() -> Pair:
    p = established()
    p.a.close()
    p.flush()
    return p


def make_close_wait() -> Pair:
    p = established()
    p.b.close()
    p.flush()
    return p


def make_last_ack() -> Pair:
    p = make_close_wait()
    p.a.close()
    p.a.poll(0.0)
    return p


def make_closing() -> Pair:
    p = established()
    p.a.close()
    p.b.close()
    p.a.poll(0.0)
    (fin_b,) = p.b.poll(0.0)
    p.a.receive_segment(fin_b, 0.0)
    p.a.poll(0.0)
    return p


def make_time_wait() -> Pair:
    p = make_fin_wait_2()
    p.b.close()
    p.flush()
    return p


STATES: dict[TcpState, tuple[Callable[[], Pair], type]] = {
    TcpState.ESTABLISHED: (make_established, TcpReset),
    TcpState.FIN_WAIT_1: (make_fin_wait_1, TcpReset),
    TcpState.FIN_WAIT_2: (make_fin_wait_2, TcpReset),
    TcpState.CLOSE_WAIT: (make_close_wait, TcpReset),
    TcpState.CLOSING: (make_closing, TcpClosed),
    TcpState.LAST_ACK: (make_last_ack, TcpClosed),
    TcpState.TIME_WAIT: (make_time_wait, TcpClosed),
}


@pytest.mark.parametrize("state", list(STATES), ids=str)
def test_exact_rst_resets(state: TcpState) -> None:
    make, terminal = STATES[state]
    p = make()
    a = p.a
    assert a.state is state
    a.events()
    a.receive_segment(seg(a.rcv_nxt, 0, "R"), 1.0)
    assert a.state is TcpState.CLOSED
    assert [type(e) for e in a.events()] == [terminal]


@pytest.mark.parametrize("state", list(STATES), ids=str)
def test_in_window_rst_draws_challenge_ack(state: TcpState) -> None:
    make, _ = STATES[state]
    p = make()
    a = p.a
    a.events()
    a.receive_segment(seg(a.rcv_nxt + 100, 0, "R"), 0.01)
    assert a.state is state
    (ack,) = a.poll(0.01)
    assert letters(ack) == "A"
    assert ack.seq == a.snd_nxt & 0xFFFFFFFF and ack.ack == a.rcv_nxt & 0xFFFFFFFF
    assert a.stats.challenge_acks == 1


@pytest.mark.parametrize("state", list(STATES), ids=str)
def test_out_of_window_rst_is_ignored(state: TcpState) -> None:
    make, _ = STATES[state]
    p = make()
    a = p.a
    a.events()
    a.receive_segment(seg(a.rcv_nxt + 10_000_000, 0, "R"), 0.01)
    a.receive_segment(seg(a.rcv_nxt - 1, 0, "R"), 0.01)
    assert a.state is state
    assert a.poll(0.01) == []  # before any retransmission timer fires
    assert a.events() == []


def test_rst_in_syn_received_forgets_the_embryonic_connection() -> None:
    conn = TcpConnection.accept_syn(
        to_server(CLIENT_ISN, 0, "S"),
        local=SERVER,
        remote=CLIENT,
        config=PLAIN,
        isn=SERVER_ISN,
        now=0.0,
    )
    conn.poll(0.0)
    conn.receive_segment(to_server(CLIENT_ISN + 1, 0, "R"), 0.01)
    assert conn.state is TcpState.CLOSED
    assert conn.events() == [TcpReset()]


def test_syn_in_established_draws_challenge_ack() -> None:
    p = established()
    a = p.a
    a.receive_segment(seg(a.rcv_nxt + 5, 0, "S"), 1.0)
    assert a.state is TcpState.ESTABLISHED
    (ack,) = a.poll(1.0)
    assert letters(ack) == "A"
    # Even an out-of-window SYN only gets an ACK (the sequence check answers it).
    a.receive_segment(seg(a.rcv_nxt + 10_000_000, 0, "S"), 1.0)
    assert a.state is TcpState.ESTABLISHED
    assert [letters(s) for s in a.poll(1.0)] == ["A"]


def test_challenge_acks_are_rate_limited() -> None:
    p = Pair(TcpConfig(timestamps=False, sack=False, challenge_ack_limit=3))
    p.handshake()
    a = p.a
    sent = 0
    for _ in range(10):
        a.receive_segment(seg(a.rcv_nxt + 1, 0, "R"), 5.0)
        sent += len(a.poll(5.0))
    assert sent == 3
    a.receive_segment(seg(a.rcv_nxt + 1, 0, "R"), 6.0)
    assert len(a.poll(6.0)) == 1

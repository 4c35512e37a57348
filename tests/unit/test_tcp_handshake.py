"""Opening connections: active, passive (listener), simultaneous; SYN retries; bad ACKs."""

from __future__ import annotations

import pytest

from guest.stack.tcp import (
    TcpConfig,
    TcpConnected,
    TcpConnection,
    TcpConnectionFailed,
    TcpListener,
    TcpReset,
    TcpState,
    TcpStateError,
)
from tests.unit.tcp_helpers import (
    CLIENT,
    CLIENT_ISN,
    PLAIN,
    SERVER,
    SERVER_ISN,
    Pair,
    client,
    letters,
    seg,
    to_server,
)


def test_active_open_three_way_handshake() -> None:
    c = client(TcpConfig())
    c.connect()
    assert c.state is TcpState.SYN_SENT
    (syn,) = c.poll(1.0)
    assert letters(syn) == "S"
    assert syn.seq == CLIENT_ISN and syn.ack == 0
    assert syn.mss == 1460 and syn.window_scale == 3 and syn.sack_permitted
    assert syn.timestamp == (1000, 0)
    assert syn.window == 65535
    c.receive_segment(
        seg(
            SERVER_ISN,
            CLIENT_ISN + 1,
            "SA",
            mss=1460,
            window_scale=7,
            sack_permitted=True,
            timestamp=(500, 1000),
        ),
        1.02,
    )
    assert c.state is TcpState.ESTABLISHED
    assert c.events() == [TcpConnected()]
    (ack,) = c.poll(1.02)
    assert letters(ack) == "A"
    assert (ack.seq, ack.ack) == (CLIENT_ISN + 1, SERVER_ISN + 1)
    assert ack.timestamp == (1020, 500)
    assert c.negotiated == {
        "mss": 1448,
        "send_mss": 1460,
        "window_scaling": True,
        "snd_wscale": 7,
        "rcv_wscale": 3,
        "timestamps": True,
        "sack": True,
    }
    assert c.stats.rtt_samples == 1 and c.stats.srtt == pytest.approx(0.02)


def test_passive_open_via_listener() -> None:
    lst = TcpListener(SERVER, TcpConfig(), isn=lambda _l, _r, _t: SERVER_ISN)
    syn = to_server(
        CLIENT_ISN, 0, "S", mss=1200, window_scale=2, sack_permitted=True, timestamp=(77, 0)
    )
    res = lst.receive_segment(syn, CLIENT, 1.0)
    assert res.reply is None
    conn = res.connection
    assert conn is not None and conn.state is TcpState.SYN_RECEIVED
    assert lst.accept() is None and lst.pending == 1
    (syn_ack,) = conn.poll(1.0)
    assert letters(syn_ack) == "SA"
    assert (syn_ack.seq, syn_ack.ack) == (SERVER_ISN, CLIENT_ISN + 1)
    assert syn_ack.window_scale == 3 and syn_ack.sack_permitted
    assert syn_ack.timestamp == (1000, 77)
    conn.receive_segment(to_server(CLIENT_ISN + 1, SERVER_ISN + 1, "A", timestamp=(78, 1000)), 1.02)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.events() == [TcpConnected()]
    assert lst.accept() is conn and lst.pending == 0
    assert conn.mss == 1200 - 12
    assert conn.poll(1.02) == []  # nothing to say after the handshake


def test_syn_ack_only_echoes_options_the_peer_offered() -> None:
    conn = TcpConnection.accept_syn(
        to_server(CLIENT_ISN, 0, "S", mss=1400),
        local=SERVER,
        remote=CLIENT,
        config=TcpConfig(),
        isn=SERVER_ISN,
        now=0.0,
    )
    (syn_ack,) = conn.poll(0.0)
    assert syn_ack.window_scale is None
    assert not syn_ack.sack_permitted
    assert syn_ack.timestamp is None
    assert syn_ack.mss == 1460


def test_data_on_the_third_ack_is_delivered() -> None:
    conn = TcpConnection.accept_syn(
        to_server(CLIENT_ISN, 0, "S"),
        local=SERVER,
        remote=CLIENT,
        config=PLAIN,
        isn=SERVER_ISN,
        now=0.0,
    )
    conn.poll(0.0)
    conn.receive_segment(to_server(CLIENT_ISN + 1, SERVER_ISN + 1, "AP", payload=b"GET /"), 0.01)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.recv() == b"GET /"


def test_simultaneous_open() -> None:
    p = Pair()
    p.b = TcpConnection(SERVER, CLIENT, PLAIN, isn=SERVER_ISN)
    p.a.connect()
    p.b.connect()
    (syn_a,) = p.a.poll(0.0)
    (syn_b,) = p.b.poll(0.0)
    p.a.receive_segment(syn_b, 0.01)
    p.b.receive_segment(syn_a, 0.01)
    assert p.a.state is TcpState.SYN_RECEIVED and p.b.state is TcpState.SYN_RECEIVED
    (sa_a,) = p.a.poll(0.01)
    (sa_b,) = p.b.poll(0.01)
    assert letters(sa_a) == "SA" and (sa_a.seq, sa_a.ack) == (CLIENT_ISN, SERVER_ISN + 1)
    assert letters(sa_b) == "SA" and (sa_b.seq, sa_b.ack) == (SERVER_ISN, CLIENT_ISN + 1)
    p.a.receive_segment(sa_b, 0.02)
    p.b.receive_segment(sa_a, 0.02)
    assert p.a.state is TcpState.ESTABLISHED and p.b.state is TcpState.ESTABLISHED
    assert p.a.events() == [TcpConnected()] and p.b.events() == [TcpConnected()]
    p.now = 0.02
    p.a.send(b"ping")
    p.flush()
    assert p.b.recv() == b"ping"


def test_bad_ack_in_syn_sent_draws_reset() -> None:
    c = client()
    c.connect()
    c.poll(0.0)
    c.receive_segment(seg(SERVER_ISN, CLIENT_ISN + 5, "SA"), 0.01)
    (rst,) = c.poll(0.01)
    assert letters(rst) == "R" and rst.seq == CLIENT_ISN + 5
    assert c.state is TcpState.SYN_SENT


def test_rst_in_syn_sent() -> None:
    c = client()
    c.connect()
    c.poll(0.0)
    c.receive_segment(seg(0, 0, "R"), 0.01)  # no ACK: ignored
    c.receive_segment(seg(0, CLIENT_ISN + 9, "RA"), 0.01)  # unacceptable ACK: ignored
    assert c.state is TcpState.SYN_SENT and c.poll(0.01) == []
    c.receive_segment(seg(0, CLIENT_ISN + 1, "RA"), 0.01)  # connection refused
    assert c.state is TcpState.CLOSED
    assert c.events() == [TcpReset()]


def test_syn_retransmission_backoff_and_give_up() -> None:
    c = client(TcpConfig(syn_retries=3, timestamps=False))
    c.connect()
    sent_at = []
    now = 0.0
    while True:
        out = c.poll(now)
        if out:
            assert letters(out[0]) == "S"
            sent_at.append(now)
        t = c.next_timeout()
        if t is None:
            break
        now = t
    assert sent_at == [0.0, 1.0, 3.0, 7.0]
    assert now == 15.0
    assert c.events() == [TcpConnectionFailed("connection timed out (SYN)")]
    assert c.stats.retransmits_timeout == 3


def test_retransmitted_syn_in_syn_received_resends_syn_ack() -> None:
    conn = TcpConnection.accept_syn(
        to_server(CLIENT_ISN, 0, "S"),
        local=SERVER,
        remote=CLIENT,
        config=PLAIN,
        isn=SERVER_ISN,
        now=0.0,
    )
    conn.poll(0.0)
    conn.receive_segment(to_server(CLIENT_ISN, 0, "S"), 0.5)
    (again,) = conn.poll(0.5)
    assert letters(again) == "SA" and again.seq == SERVER_ISN
    # Counted as the resend it is: a wire watcher sees the SYN-ACK's sequence space twice.
    assert (conn.stats.retransmits_fast, conn.stats.retransmits_timeout) == (1, 0)
    conn.receive_segment(to_server(CLIENT_ISN, 0, "S"), 0.6)
    conn.receive_segment(to_server(CLIENT_ISN, 0, "S"), 0.6)  # both before we send: one answer
    assert len(conn.poll(0.6)) == 1 and conn.stats.retransmits_fast == 2


def test_syn_ack_retransmission_until_give_up_and_listener_forgets() -> None:
    lst = TcpListener(SERVER, TcpConfig(synack_retries=2), isn=lambda *_: SERVER_ISN)
    conn = lst.receive_segment(to_server(CLIENT_ISN, 0, "S"), CLIENT, 0.0).connection
    assert conn is not None
    now = 0.0
    count = 0
    while True:
        count += len(conn.poll(now))
        t = conn.next_timeout()
        if t is None:
            break
        now = t
    assert count == 3  # SYN-ACK and two retransmissions
    assert conn.state is TcpState.CLOSED
    assert lst.pending == 0 and lst.accept() is None


def test_bad_ack_in_syn_received_draws_reset() -> None:
    conn = TcpConnection.accept_syn(
        to_server(CLIENT_ISN, 0, "S"),
        local=SERVER,
        remote=CLIENT,
        config=PLAIN,
        isn=SERVER_ISN,
        now=0.0,
    )
    conn.poll(0.0)
    conn.receive_segment(to_server(CLIENT_ISN + 1, SERVER_ISN + 77, "A"), 0.01)
    (rst,) = conn.poll(0.01)
    assert letters(rst) == "R" and rst.seq == SERVER_ISN + 77
    assert conn.state is TcpState.SYN_RECEIVED


def test_listener_segment_rules() -> None:
    lst = TcpListener(SERVER, PLAIN, isn=lambda *_: SERVER_ISN, backlog=1)
    assert lst.receive_segment(to_server(1, 2, "R"), CLIENT, 0.0).reply is None
    rst = lst.receive_segment(to_server(1, 2, "A"), CLIENT, 0.0).reply
    assert rst is not None and letters(rst) == "R" and rst.seq == 2
    assert (
        lst.receive_segment(to_server(1, 0, "", payload=b"x"), CLIENT, 0.0)
        == type(lst.receive_segment(to_server(1, 2, "R"), CLIENT, 0.0))()
    )
    assert lst.receive_segment(to_server(1, 0, "S"), CLIENT, 0.0).connection is not None
    # Backlog of one is full: the next SYN is dropped silently.
    other = ("10.0.0.9", 5555)
    dropped = lst.receive_segment(to_server(1, 0, "S"), other, 0.0)
    assert dropped.connection is None and dropped.reply is None
    assert lst.syns_dropped == 1


def test_data_queued_before_handshake_is_sent_after_it() -> None:
    c = client()
    c.connect()
    assert c.send(b"early") == 5
    (syn,) = c.poll(0.0)
    assert syn.payload == b""
    c.receive_segment(seg(SERVER_ISN, CLIENT_ISN + 1, "SA", mss=1000), 0.01)
    (data,) = c.poll(0.01)
    assert data.payload == b"early" and data.seq == CLIENT_ISN + 1


def test_close_in_syn_sent_and_api_misuse() -> None:
    c = client()
    with pytest.raises(TcpStateError):
        c.send(b"x")
    c.connect()
    with pytest.raises(TcpStateError):
        c.connect()
    c.close()
    assert c.state is TcpState.CLOSED
    assert [type(e).__name__ for e in c.events()] == ["TcpClosed"]
    assert c.poll(0.0) == []

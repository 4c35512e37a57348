"""RFC 5681 / RFC 6582 congestion control arithmetic, then NewReno on a live connection."""

from __future__ import annotations

from guest.stack.tcp import TcpConfig
from guest.stack.tcp.congestion import CcAction, NewReno, initial_window
from guest.stack.tcp.cubic import Cubic
from tests.unit.tcp_helpers import CLIENT_ISN, SERVER_ISN, open_client, seg

MSS = 1000
ISS = 0


def test_initial_window_rfc6928() -> None:
    assert initial_window(1460, 10) == 14600
    assert initial_window(1448, 10) == 14480
    assert initial_window(4000, 10) == 14600  # min(40000, max(8000, 14600))
    assert initial_window(1460, 2) == 2920


def test_slow_start_then_congestion_avoidance() -> None:
    cc = NewReno(MSS, 2, ISS)
    assert cc.cwnd == 2000
    cc.on_new_ack(1000, 1000, 5000)
    assert cc.cwnd == 3000  # + min(N, SMSS)
    cc.on_new_ack(4000, 3000, 5000)
    assert cc.cwnd == 4000  # one ACK of three segments still adds one SMSS only
    cc.ssthresh = 4000
    for i in range(4):
        cc.on_new_ack(5000 + i * 1000, 1000, 100000)
    assert cc.cwnd == 5000  # one SMSS after a full cwnd of bytes was acknowledged


def test_fast_retransmit_on_third_dup_ack() -> None:
    cc = NewReno(MSS, 10, ISS)
    flight = 10000
    assert cc.on_dup_ack(1, flight, 10001) == CcAction.NONE
    assert cc.on_dup_ack(1, flight, 10001) == CcAction.NONE
    assert cc.on_dup_ack(1, flight, 10001) == CcAction.RETRANSMIT_HEAD
    assert cc.in_recovery
    assert cc.ssthresh == 5000
    assert cc.cwnd == 5000 + 3 * MSS
    assert cc.recover == 10000
    cc.on_dup_ack(1, flight, 10001)
    assert cc.cwnd == 9000  # inflation


def test_partial_and_full_ack() -> None:
    cc = NewReno(MSS, 10, ISS)
    for _ in range(3):
        cc.on_dup_ack(1, 10000, 10001)
    cwnd = cc.cwnd
    # Partial ACK of 3000 bytes: deflate by 3000, add back one SMSS, retransmit, re-arm timer.
    action = cc.on_new_ack(3001, 3000, 10001)
    assert action == CcAction.RETRANSMIT_HEAD
    assert cc.cwnd == cwnd - 3000 + MSS
    # A second partial ACK does not re-arm the timer (Impatient variant).
    action = cc.on_new_ack(5001, 2000, 10001)
    assert action == CcAction.RETRANSMIT_HEAD | CcAction.KEEP_TIMER
    # Full ACK: cwnd = min(ssthresh, FlightSize + SMSS), recovery over.
    assert cc.on_new_ack(10001, 5000, 12001) == CcAction.NONE
    assert not cc.in_recovery
    assert cc.cwnd == min(5000, 2000 + MSS)


def test_a_sack_recovery_ends_at_ssthresh_even_with_a_drained_flight() -> None:
    """RFC 6582 step 3 option 2, as Linux ends a recovery: the flight PRR kept near ssthresh
    may have drained past it (a loss of the last ACKs, say), and option 1 would then shrink
    the window a second time for the same loss."""
    for cc_class in (NewReno, Cubic):
        cc = cc_class(MSS, 10, ISS)
        cc.enter_sack_recovery(10000, 10001)
        ssthresh = cc.ssthresh
        assert cc.on_new_ack(10001, 10000, 10001) == CcAction.NONE  # all of it, nothing left
        assert not cc.in_recovery
        assert cc.cwnd == ssthresh > MSS  # option 1 would say min(ssthresh, 0 + SMSS + SMSS)


def test_dup_acks_below_recover_do_not_restart_recovery() -> None:
    """RFC 6582 step 2: after a timeout, duplicates of old data must not trigger recovery."""
    cc = NewReno(MSS, 10, ISS)
    cc.on_timeout(10000, 10001, first=True)
    assert cc.cwnd == MSS and cc.ssthresh == 5000
    for _ in range(3):
        action = cc.on_dup_ack(2001, 8000, 10001)
    assert action == CcAction.NONE
    assert not cc.in_recovery


def test_repeated_timeouts_keep_ssthresh() -> None:
    cc = NewReno(MSS, 10, ISS)
    cc.on_timeout(20000, 20001, first=True)
    cc.on_timeout(1000, 20001, first=False)
    assert cc.ssthresh == 10000
    assert cc.cwnd == MSS


def test_idle_restart() -> None:
    cc = NewReno(MSS, 4, ISS)
    cc.cwnd = 50000
    cc.on_idle_restart()
    assert cc.cwnd == 4000


def _cfg() -> TcpConfig:
    return TcpConfig(
        timestamps=False,
        sack=False,
        window_scaling=False,
        delayed_ack=False,
        mss=1000,
        limited_transmit=False,
    )


def test_newreno_partial_ack_on_connection() -> None:
    """Segments 2 and 5 of 8 are lost: fast retransmit of 2, then the partial ACK that
    acknowledges up to 5 triggers the retransmission of 5 without waiting for a timeout."""
    c = open_client(_cfg())
    una = CLIENT_ISN + 1
    c.send(bytes(8000))
    out = c.poll(0.0)
    assert [s.seq - una for s in out] == [i * 1000 for i in range(8)]
    now = 0.05
    # Segment 1 arrives: ACK 1000. Segments 3, 4 (and later 6, 7, 8) produce duplicates.
    c.receive_segment(seg(SERVER_ISN + 1, una + 1000), now)
    for _ in range(3):
        c.receive_segment(seg(SERVER_ISN + 1, una + 1000), now)
    out = c.poll(now)
    assert out[0].seq == una + 1000 and len(out[0].payload) == 1000
    assert c.stats.retransmits_fast == 1 and c.stats.fast_recoveries == 1
    # The retransmitted 2 fills the hole up to the second loss: partial ACK to 4000.
    now = 0.1
    c.receive_segment(seg(SERVER_ISN + 1, una + 4000), now)
    out = c.poll(now)
    assert out and out[0].seq == una + 4000
    assert c.stats.retransmits_fast == 2
    assert c.stats.timeouts == 0
    # Full ACK ends recovery.
    c.receive_segment(seg(SERVER_ISN + 1, una + 8000), 0.15)
    assert not c._cc.in_recovery


def test_limited_transmit_sends_new_data_on_first_dup_acks() -> None:
    cfg = TcpConfig(
        timestamps=False,
        sack=False,
        window_scaling=False,
        delayed_ack=False,
        mss=1000,
        initial_window=2,
    )
    c = open_client(cfg)
    una = CLIENT_ISN + 1
    c.send(bytes(10000))
    assert len(c.poll(0.0)) == 2  # IW of two segments
    c.receive_segment(seg(SERVER_ISN + 1, una), 0.05)  # first duplicate
    out = c.poll(0.05)
    assert [s.seq - una for s in out] == [2000]  # RFC 3042: one new segment


def test_sack_recovery_repairs_several_holes_in_one_rtt() -> None:
    """RFC 6675: with SACK, all holes the scoreboard shows lost go out at once, paced by pipe
    (NewReno without SACK would need one RTT per hole). RFC 6675's own loss rule, RACK off:
    `test_tcp_rack` has RACK's answer to the same losses."""
    cfg = TcpConfig(timestamps=False, window_scaling=False, delayed_ack=False, mss=1000, rack=False)
    c = open_client(cfg, sack_permitted=True)
    una = CLIENT_ISN + 1
    c.send(bytes(20_000))
    assert len(c.poll(0.0)) == 10
    now = 0.05
    c.receive_segment(seg(SERVER_ISN + 1, una + 1000), now)  # segment 0 arrived
    sacks: list[tuple[int, int]] = []
    # Segments 1, 4 and 7 were lost; the others arrive and are SACKed.
    for lo, hi in ((2000, 4000), (5000, 7000), (8000, 10000)):
        sacks.insert(0, (una + lo, una + hi))
        c.receive_segment(seg(SERVER_ISN + 1, una + 1000, sack_blocks=tuple(sacks)), now)
    out = c.poll(now)
    rel = [s.seq - una for s in out]
    # Both holes with more than 2*SMSS SACKed above them go out in one burst; the hole at
    # 7000 has only 2000 SACKed bytes above it and is not deemed lost yet (IsLost()).
    assert rel[:2] == [1000, 4000]
    assert c._cc.in_recovery and c._cc.sack_mode
    assert all(r >= 10_000 for r in rel[2:])  # then new data as pipe allows
    assert rel[2:]
    # Both retransmissions and the new data arrive: partial ACK to 7000, new SACK above.
    now += 0.05
    c.receive_segment(seg(SERVER_ISN + 1, una + 7000, sack_blocks=((una + 8000, c.snd_max),)), now)
    out = c.poll(now)
    assert out[0].seq - una == 7000
    assert c.stats.retransmits_fast == 3 and c.stats.timeouts == 0
    # Recovery ends with the ACK beyond the recovery point.
    c.receive_segment(seg(SERVER_ISN + 1, c.snd_max), now + 0.05)
    assert not c._cc.in_recovery


def test_sack_loss_detection_without_three_dup_acks() -> None:
    """Two of the three duplicate ACKs were lost, but the SACK blocks of the one that
    arrived already show the head as lost (RFC 6675 IsLost)."""
    cfg = TcpConfig(timestamps=False, window_scaling=False, delayed_ack=False, mss=1000)
    c = open_client(cfg, sack_permitted=True)
    una = CLIENT_ISN + 1
    c.send(bytes(10_000))
    c.poll(0.0)
    c.receive_segment(seg(SERVER_ISN + 1, una, sack_blocks=((una + 1000, una + 5000),)), 0.05)
    out = c.poll(0.05)
    assert out[0].seq == una and c.stats.fast_recoveries == 1


def test_sack_recovery_can_be_disabled() -> None:
    cfg = TcpConfig(
        timestamps=False, window_scaling=False, delayed_ack=False, mss=1000, sack_recovery=False
    )
    c = open_client(cfg, sack_permitted=True)
    una = CLIENT_ISN + 1
    c.send(bytes(10_000))
    c.poll(0.0)
    for hi in (2000, 3000, 4000):
        c.receive_segment(seg(SERVER_ISN + 1, una, sack_blocks=((una + 1000, una + hi),)), 0.05)
    out = c.poll(0.05)
    assert out[0].seq == una and c._cc.in_recovery and not c._cc.sack_mode

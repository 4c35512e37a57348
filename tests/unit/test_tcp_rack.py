"""RACK-TLP (RFC 8985): the per-segment record, RACK's steps against the RFC's pseudo-code, and
the connection finding losses by time: lost retransmissions and tail losses repaired without
the retransmission timer, where RFC 6675's rule alone (RACK off, the control) must wait for it.
"""

from __future__ import annotations

import random

import pytest

from guest.stack.tcp import TcpConfig, TcpConnection
from guest.stack.tcp.rack import Rack, SentLog, SentSegment, probe_timeout, sent_after
from guest.testing.impairment import LinkConfig
from guest.testing.tcp_sim import run_transfer
from tests.unit.tcp_helpers import CLIENT_ISN, SERVER_ISN, client, open_client, seg

UNA = CLIENT_ISN + 1
#: Scripted: no timestamps (ambiguity by RTT only), no delayed ACK, 1000-byte segments.
SCRIPTED = TcpConfig(timestamps=False, window_scaling=False, delayed_ack=False, mss=1000)


def _spans(log: SentLog) -> list[tuple[int, int, bool, bool, bool]]:
    return [(s.start, s.end, s.retransmitted, s.sacked, s.lost) for s in log.segments]


# --------------------------------------------------------------------------- the record


def test_a_resend_splits_the_record_so_each_piece_keeps_its_history() -> None:
    log = SentLog()
    log.on_send(0, 3000, 0, now=1.0, tsval=1)  # a TSO burst of three MSS
    log.on_send(1000, 2000, 3000, now=2.0, tsval=2)  # its middle MSS resent
    assert _spans(log) == [
        (0, 1000, False, False, False),
        (1000, 2000, True, False, False),
        (2000, 3000, False, False, False),
    ]
    assert [s.xmit_time for s in log.segments] == [1.0, 2.0, 1.0]
    log.on_send(2500, 3500, 3000, now=3.0, tsval=3)  # part resend, part new data
    assert [(s.start, s.end, s.retransmitted) for s in log.segments[2:]] == [
        (2000, 2500, False),
        (2500, 3000, True),
        (3000, 3500, False),
    ]


def test_the_cumulative_ack_takes_whole_records_and_trims_a_part() -> None:
    log = SentLog()
    for k in range(3):
        log.on_send(k * 1000, (k + 1) * 1000, k * 1000, now=0.0, tsval=0)
    assert [s.start for s in log.acked(1500)] == [0]
    assert [(s.start, s.end) for s in log.segments] == [(1500, 2000), (2000, 3000)]


def test_only_records_wholly_inside_a_sack_block_are_sacked() -> None:
    log = SentLog()
    for k in range(4):
        log.on_send(k * 1000, (k + 1) * 1000, k * 1000, now=0.0, tsval=0)
    assert [s.start for s in log.sacked(1500, 4000)] == [2000, 3000]  # 1000-2000 only half
    assert log.sacked(2000, 4000) == []  # already marked: not new
    assert [s.sacked for s in log.segments] == [False, False, True, True]


# --------------------------------------------------------------------------- RACK's steps


def _seg(
    start: int, end: int, t: float, retransmitted: bool = False, tsval: int = 0
) -> SentSegment:
    return SentSegment(start, end, t, tsval, retransmitted)


def test_sent_after_orders_by_time_then_by_sequence() -> None:
    assert sent_after(2.0, 0, 1.0, 5000)
    assert sent_after(1.0, 2000, 1.0, 1000)  # one burst: the higher segment is the later
    assert not sent_after(1.0, 1000, 1.0, 1000)


def test_update_skips_a_retransmission_whose_ack_may_be_the_originals() -> None:
    """RFC 8985 section 6.2 step 2: TSecr before the resend, or an RTT below the minimum."""
    rack = Rack()
    rack.update(_seg(0, 1000, 0.0), now=0.010, tsecr=None)  # min RTT 10 ms
    resent = _seg(1000, 2000, 0.100, retransmitted=True, tsval=100)
    rack.update(resent, now=0.105, tsecr=None)  # 5 ms: faster than any round trip
    assert rack.xmit_time == 0.0
    rack.update(resent, now=0.120, tsecr=99)  # echoes a TSval from before the resend
    assert rack.xmit_time == 0.0
    rack.update(resent, now=0.120, tsecr=100)
    assert (rack.xmit_time, rack.end_seq, rack.rtt) == (0.100, 2000, pytest.approx(0.020))


def test_reordering_is_seen_when_an_original_arrives_below_what_was_delivered() -> None:
    rack = Rack()
    rack.update(_seg(2000, 3000, 0.0), now=0.01, tsecr=None)
    assert not rack.reordering_seen
    rack.update(_seg(1000, 2000, 0.0), now=0.02, tsecr=None)
    assert rack.reordering_seen and rack.fack == 3000


def test_the_reordering_window() -> None:
    """Zero in a plain loss (recovery, or more than DupThresh-1 segments SACKed) unless
    reordering was seen; else min RTT / 4, at most SRTT."""
    rack = Rack()
    rack.update(_seg(0, 1000, 0.0), now=0.040, tsecr=None)
    assert rack.reo_wnd(in_recovery=True, sacked_bytes=0, mss=1000, srtt=0.05) == 0.0
    assert rack.reo_wnd(in_recovery=False, sacked_bytes=2001, mss=1000, srtt=0.05) == 0.0
    assert rack.reo_wnd(in_recovery=False, sacked_bytes=2000, mss=1000, srtt=0.05) == 0.010
    assert rack.reo_wnd(in_recovery=False, sacked_bytes=0, mss=1000, srtt=0.004) == 0.004
    rack.reordering_seen = True
    assert rack.reo_wnd(in_recovery=True, sacked_bytes=9000, mss=1000, srtt=0.05) == 0.010


def test_detect_marks_what_was_sent_earlier_by_more_than_rtt_plus_window() -> None:
    """RFC 8985 section 6.2 step 5, segment by segment; the timer waits for the latest."""
    log = SentLog()
    for k, t in enumerate((0.0, 0.001, 0.002, 0.010)):
        log.on_send(k * 1000, (k + 1) * 1000, k * 1000, now=t, tsval=0)
    rack = Rack()
    (last,) = log.sacked(3000, 4000)
    rack.update(last, now=0.030, tsecr=None)  # RTT 20 ms, sent at 10 ms
    newly, deadline = rack.detect(log, now=0.0215, reo_wnd=0.0)
    # Lost when xmit + 20 ms <= now: segment 0 (0.0) and 1 (0.001), not 2 (0.002) yet.
    assert newly == 2 and [s.lost for s in log.segments] == [True, True, False, False]
    assert deadline == pytest.approx(0.022)
    assert rack.detect(log, now=0.022, reo_wnd=0.0) == (1, None)


def test_probe_timeout() -> None:
    """RFC 8985 section 7.2: 2*SRTT; plus WCDelAckT for one segment; never after the RTO."""
    assert probe_timeout(0.010, 5, rto_left=0.5) == pytest.approx(0.020)
    assert probe_timeout(0.010, 1, rto_left=0.5) == pytest.approx(0.220)
    assert probe_timeout(0.010, 5, rto_left=0.015) == 0.015
    assert probe_timeout(None, 5, rto_left=None) == 1.0


# --------------------------------------------------------------------------- the connection


def test_rack_marks_every_hole_sent_before_the_last_delivered_segment() -> None:
    """The losses of `test_sack_recovery_repairs_several_holes_in_one_rtt`: RFC 6675 waits
    for more SACKs above the hole at 7000; RACK knows it was sent before what arrived."""
    c = open_client(SCRIPTED, sack_permitted=True)
    c.send(bytes(20_000))
    assert len(c.poll(0.0)) == 10
    now = 0.05
    c.receive_segment(seg(SERVER_ISN + 1, UNA + 1000), now)
    sacks: list[tuple[int, int]] = []
    for lo, hi in ((2000, 4000), (5000, 7000), (8000, 10000)):
        sacks.insert(0, (UNA + lo, UNA + hi))
        c.receive_segment(seg(SERVER_ISN + 1, UNA + 1000, sack_blocks=tuple(sacks)), now)
    rel = [s.seq - UNA for s in c.poll(now)]
    assert rel[:3] == [1000, 4000, 7000]
    assert all(r >= 10_000 for r in rel[3:])
    assert c.stats.rack_lost == 3 and c.stats.fast_recoveries == 1


def _lost_retransmission(rack: bool) -> tuple[list[int], float | None, object]:
    """Segment 1 of 10 is lost, then its fast retransmission too; what the sender does once
    SACKs arrive for new data sent after that retransmission."""
    cfg = TcpConfig(timestamps=False, window_scaling=False, delayed_ack=False, mss=1000, rack=rack)
    c = open_client(cfg, sack_permitted=True)
    c.send(bytes(30_000))
    c.poll(0.0)  # segments 0-9

    def sacked_to(hi: int, now: float) -> None:
        blocks = ((UNA + 2000, UNA + hi),)
        c.receive_segment(seg(SERVER_ISN + 1, UNA + 1000, sack_blocks=blocks), now)

    c.receive_segment(seg(SERVER_ISN + 1, UNA + 1000), 0.05)
    for hi in (3000, 4000, 5000):  # segments 2-4 arrive: segment 1 is lost
        sacked_to(hi, 0.05)
    assert [s.seq - UNA for s in c.poll(0.05)] == [1000]  # the fast retransmission, lost
    sacked_to(10_000, 0.06)  # segments 5-9 arrive: room for new data
    new = [s.seq - UNA for s in c.poll(0.06)]
    assert new and min(new) >= 10_000
    sacked_to(max(new) + 1000, 0.12)  # the new data arrived, sent after the retransmission
    out = [s.seq - UNA for s in c.poll(0.12)]
    return out, c._rtx_deadline, c.stats


def test_a_lost_retransmission_is_found_by_time_and_resent_before_the_timer() -> None:
    out, _, stats = _lost_retransmission(rack=True)
    assert out and out[0] == 1000
    assert stats.timeouts == 0 and stats.retransmits_fast == 2  # type: ignore[attr-defined]


def test_control_without_rack_the_lost_retransmission_waits_for_the_timer() -> None:
    out, deadline, stats = _lost_retransmission(rack=False)
    assert 1000 not in out
    assert deadline is not None and stats.retransmits_fast == 1  # type: ignore[attr-defined]


def _tail(tlp: bool, lost: int) -> tuple[TcpConnection, float, list[int]]:
    """Four segments sent at 10 ms, the last `lost` of them lost, nothing more to send: the
    ACK for the others comes at 20 ms (SRTT 10 ms); what goes out when the first timer fires,
    and when."""
    cfg = TcpConfig(timestamps=False, window_scaling=False, delayed_ack=False, mss=1000, tlp=tlp)
    c = client(cfg)
    c.connect()
    c.poll(0.0)
    syn_ack = seg(SERVER_ISN, UNA, "SA", mss=1000, sack_permitted=True)
    c.receive_segment(syn_ack, 0.010)  # the handshake's RTT sample: SRTT 10 ms
    c.send(bytes(4000))
    c.poll(0.010)
    c.receive_segment(seg(SERVER_ISN + 1, UNA + 4000 - 1000 * lost), 0.020)
    c.poll(0.020)
    when = c.next_timeout()
    assert when is not None
    return c, when, [s.seq - UNA for s in c.poll(when)]


def test_a_tail_loss_is_probed_after_two_round_trips_and_repaired_by_rack() -> None:
    c, when, out = _tail(tlp=True, lost=2)
    assert out == [3000] and when == pytest.approx(0.040)  # the last segment, at 2*SRTT
    # The probe arrives above the hole: its SACK shows RACK that segment 2, sent a round trip
    # before the probe, is lost; it goes at once.
    probe_sacked = ((UNA + 3000, UNA + 4000),)
    c.receive_segment(seg(SERVER_ISN + 1, UNA + 2000, sack_blocks=probe_sacked), 0.050)
    assert [s.seq - UNA for s in c.poll(0.050)] == [2000]
    assert c.stats.tlp_probes == 1 and c.stats.timeouts == 0 and c.stats.rack_lost == 1


def test_control_without_tlp_the_tail_waits_for_the_timer() -> None:
    c, when, out = _tail(tlp=False, lost=2)
    assert out == [2000] and when == pytest.approx(0.220)  # 200 ms minimum RTO
    assert c.stats.timeouts == 1 and c.stats.tlp_probes == 0


def test_a_probe_that_repairs_a_loss_alone_reduces_the_window_once() -> None:
    """One segment in flight: the probe waits for the peer's delayed ACK too (WCDelAckT),
    so it goes when the RTO would, but as a probe: no timeout, no backoff, no slow start.
    An ACK exactly up to it cannot say whether the original arrived too; the next one, beyond
    it with no D-SACK, says the probe repaired a loss (RFC 8985 section 7.4, as Linux)."""
    c, when, out = _tail(tlp=True, lost=1)
    assert out == [3000] and when == pytest.approx(0.220)
    assert c.stats.tlp_probes == 1 and c.stats.timeouts == 0
    cwnd = c._cc.cwnd
    c.receive_segment(seg(SERVER_ISN + 1, UNA + 4000), 0.230)
    assert c.stats.tlp_repairs == 0 and c._tlp_end is not None  # undecided
    c.send(bytes(1000))
    c.poll(0.230)
    c.receive_segment(seg(SERVER_ISN + 1, UNA + 5000), 0.240)
    assert c.stats.tlp_repairs == 1 and c._cc.cwnd < cwnd and c._tlp_end is None


def test_a_probe_whose_original_arrived_too_changes_nothing() -> None:
    """The control: the ACK up to the probe, then a pure duplicate ACK (the receiver got the
    probe as a duplicate): nothing was lost, the window stays."""
    c, _, _ = _tail(tlp=True, lost=1)
    cwnd = c._cc.cwnd
    c.receive_segment(seg(SERVER_ISN + 1, UNA + 4000), 0.230)
    c.receive_segment(seg(SERVER_ISN + 1, UNA + 4000), 0.231)
    assert c.stats.tlp_repairs == 0 and c._cc.cwnd >= cwnd and c._tlp_end is None


# --------------------------------------------------------------------------- on a lossy link


def _transfers(loss: float, rack: bool, seeds: int) -> list[int]:
    """Seeded 1 MB transfers through a link losing `loss` of the segments each way, checked
    byte for byte and against a bound on resends; the sender's timeouts of each."""
    data = random.Random(5).randbytes(1_000_000)
    link = LinkConfig(delay=0.002, bandwidth=50e6, queue_bytes=200_000, loss=loss)
    cfg = TcpConfig(rack=rack, tlp=rack)
    timeouts = []
    for seed in range(seeds):
        r = run_transfer(
            data, b"", forward=link, backward=link, client_config=cfg, server_config=cfg,
            seed=seed, time_limit=300.0,
        )  # fmt: skip
        assert r.completed and r.server_received == data
        s = r.client_stats
        # Every resend answers a loss, except what probes and timeouts resend on suspicion.
        resent = s.retransmits_fast + s.retransmits_timeout
        assert resent <= r.forward.lost + 3 * (s.timeouts + s.tlp_probes) + 10, s
        timeouts.append(s.timeouts)
    return timeouts


@pytest.mark.parametrize("loss", [0.01, 0.02])
def test_rack_on_a_lossy_link_is_byte_exact(loss: float) -> None:
    _transfers(loss, rack=True, seeds=4)


def test_rack_spares_the_timer_where_rfc_6675_alone_needs_it() -> None:
    """At 5 % loss each way over eight seeds, RFC 6675 alone (the control, RACK and TLP off)
    waits for the timer 19 times; RACK-TLP must need it less than half as often."""
    with_rack = sum(_transfers(0.05, rack=True, seeds=8))
    control = sum(_transfers(0.05, rack=False, seeds=8))
    assert control >= 8, control  # the link is bad enough for the test to mean something
    assert with_rack * 2 < control, (with_rack, control)

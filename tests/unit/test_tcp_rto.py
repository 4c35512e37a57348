"""RFC 6298 RTO estimation, on its own and inside a connection (Karn, backoff)."""

from __future__ import annotations

import pytest

from guest.stack.tcp import TcpConfig
from guest.stack.tcp.rto import RtoEstimator
from tests.unit.tcp_helpers import CLIENT_ISN, PLAIN, SERVER_ISN, letters, open_client, seg


def est(min_rto: float = 0.2, max_rto: float = 60.0) -> RtoEstimator:
    return RtoEstimator(1.0, min_rto, max_rto, 0.001)


def test_initial_rto_is_one_second() -> None:
    assert est().rto == 1.0


def test_first_sample_sets_srtt_and_rttvar() -> None:
    e = est(min_rto=0.001)
    e.on_sample(0.1)
    assert e.srtt == pytest.approx(0.1)
    assert e.rttvar == pytest.approx(0.05)
    assert e.rto == pytest.approx(0.1 + 4 * 0.05)


def test_subsequent_samples_use_rfc_gains() -> None:
    e = est(min_rto=0.001)
    e.on_sample(0.1)
    e.on_sample(0.2)
    rttvar = 0.75 * 0.05 + 0.25 * abs(0.1 - 0.2)
    srtt = 0.875 * 0.1 + 0.125 * 0.2
    assert e.rttvar == pytest.approx(rttvar)
    assert e.srtt == pytest.approx(srtt)
    assert e.rto == pytest.approx(srtt + 4 * rttvar)


def test_min_and_max_bounds() -> None:
    e = est(min_rto=0.2, max_rto=2.0)
    e.on_sample(0.001)
    assert e.rto == 0.2
    e.on_sample(10.0)
    assert e.rto == 2.0


def test_rfc_minimum_of_one_second_is_a_parameter() -> None:
    e = est(min_rto=1.0)
    e.on_sample(0.01)
    assert e.rto == 1.0


def test_backoff_doubles_until_max_and_resets() -> None:
    e = est(max_rto=5.0)
    seen = []
    for _ in range(5):
        seen.append(e.rto)
        e.on_timeout()
    assert seen == [1.0, 2.0, 4.0, 5.0, 5.0]
    e.reset_backoff()
    assert e.rto == 1.0
    e.on_timeout()
    e.on_sample(0.5)  # a valid sample also ends the backoff
    assert e.backoff == 0


def _rto_deadline(conn: object) -> float | None:
    return conn.next_timeout()  # type: ignore[attr-defined]


def test_connection_backs_off_exponentially_and_gives_up() -> None:
    cfg = TcpConfig(
        timestamps=False,
        sack=False,
        window_scaling=False,
        delayed_ack=False,
        mss=1000,
        data_retries=4,
        max_rto=100.0,
    )
    c = open_client(cfg)
    base = c.stats.rto
    c.send(b"x" * 100)
    now = 0.0
    out = c.poll(now)
    assert len(out) == 1
    intervals = []
    for _ in range(4):
        deadline = c.next_timeout()
        assert deadline is not None
        intervals.append(deadline - now)
        now = deadline
        out = c.poll(now)
        assert [letters(s) for s in out] == ["AP"]
        assert out[0].seq == CLIENT_ISN + 1
    assert intervals == pytest.approx([base, 2 * base, 4 * base, 8 * base])
    assert c.stats.retransmits_timeout == 4 and c.stats.timeouts == 4
    c.poll(c.next_timeout())  # fifth expiry: data_retries exhausted
    assert c.is_closed
    assert type(c.events()[-1]).__name__ == "TcpConnectionFailed"


def test_new_ack_resets_backoff() -> None:
    c = open_client()
    c.send(b"a" * 100)
    c.poll(0.0)
    t = c.next_timeout()
    c.poll(t)  # retransmission, RTO doubled
    assert c.stats.rto == pytest.approx(2 * c._rto.base_rto)
    c.receive_segment(seg(SERVER_ISN + 1, CLIENT_ISN + 101), t + 0.01)
    assert c.stats.rto == pytest.approx(c._rto.base_rto)


def test_karn_no_sample_from_retransmitted_segment() -> None:
    """Without timestamps, an ACK for a retransmitted segment gives no RTT sample."""
    c = open_client(PLAIN)
    samples_after_handshake = c.stats.rtt_samples
    c.send(b"a" * 100)
    c.poll(0.0)
    t = c.next_timeout()
    assert c.poll(t)  # retransmission
    c.receive_segment(seg(SERVER_ISN + 1, CLIENT_ISN + 101), t + 0.05)
    assert c.stats.rtt_samples == samples_after_handshake
    # The next, never-retransmitted segment is timed again.
    c.send(b"b" * 100)
    c.poll(t + 0.1)
    c.receive_segment(seg(SERVER_ISN + 1, CLIENT_ISN + 201), t + 0.13)
    assert c.stats.rtt_samples == samples_after_handshake + 1


def test_clean_sample_measures_elapsed_time() -> None:
    cfg = TcpConfig(
        timestamps=False, sack=False, window_scaling=False, delayed_ack=False, min_rto=0.001
    )
    c = open_client(cfg)
    c._rto.srtt = None  # forget the handshake sample (taken at zero elapsed time)
    c.send(b"a" * 100)
    c.poll(1.0)
    c.receive_segment(seg(SERVER_ISN + 1, CLIENT_ISN + 101), 1.25)
    assert c.stats.srtt == pytest.approx(0.25)


def test_timestamps_disambiguate_retransmissions() -> None:
    cfg = TcpConfig(sack=False, window_scaling=False, delayed_ack=False, min_rto=0.001)
    c = open_client(cfg, timestamp=(7, 0))
    c.send(b"a" * 100)
    (first,) = c.poll(1.0)
    t = c.next_timeout()
    (again,) = c.poll(t)
    assert again.timestamp[0] > first.timestamp[0]
    samples = c.stats.rtt_samples
    # The ACK echoes the retransmission's TSval: a valid 30 ms sample.
    c.receive_segment(
        seg(SERVER_ISN + 1, CLIENT_ISN + 101, timestamp=(8, again.timestamp[0])), t + 0.03
    )
    assert c.stats.rtt_samples == samples + 1
    assert c._rto.srtt is not None and c._rto.srtt < 0.2


def test_timestamp_echo_older_than_retransmission_is_not_sampled() -> None:
    """The original ACK was lost; the ACK provoked by the retransmission echoes the first
    transmission's TSval, which would inflate the RTT by a whole RTO."""
    cfg = TcpConfig(sack=False, window_scaling=False, delayed_ack=False)
    c = open_client(cfg, timestamp=(7, 0))
    c.send(b"a" * 100)
    (first,) = c.poll(1.0)
    t = c.next_timeout()
    c.poll(t)
    samples = c.stats.rtt_samples
    c.receive_segment(
        seg(SERVER_ISN + 1, CLIENT_ISN + 101, timestamp=(8, first.timestamp[0])), t + 0.03
    )
    assert c.stats.rtt_samples == samples


def test_syn_loss_sets_rto_to_three_seconds_without_sample() -> None:
    """RFC 6298 section 5.7."""
    from tests.unit.tcp_helpers import client

    c = client(PLAIN)
    c.connect()
    c.poll(0.0)
    c.poll(1.0)  # SYN retransmitted
    c.receive_segment(seg(SERVER_ISN, CLIENT_ISN + 1, "SA"), 1.5)
    assert c.stats.rto == pytest.approx(3.0)


def test_syn_ack_echoing_the_first_syn_is_not_sampled() -> None:
    """After a lost SYN-ACK, the peer answers the resent SYN with a SYN-ACK that echoes the
    first SYN's TSval (Linux does). That "RTT" spans the whole SYN timeout: taken as a
    sample, it holds the RTO at seconds long after the handshake, and a few lost
    retransmissions then stall the connection for tens of seconds."""
    from tests.unit.tcp_helpers import client

    cfg = TcpConfig(sack=False, window_scaling=False, delayed_ack=False)
    c = client(cfg)
    c.connect()
    (syn,) = c.poll(10.0)
    t = c.next_timeout()  # SYN retransmitted 1 s later
    (again,) = c.poll(t)
    assert again.timestamp[0] > syn.timestamp[0]
    c.receive_segment(
        seg(SERVER_ISN, CLIENT_ISN + 1, "SA", mss=1000, timestamp=(7, syn.timestamp[0])),
        t + 0.001,
    )
    assert c.stats.rtt_samples == 0 and c.stats.srtt is None
    assert c.stats.rto == pytest.approx(3.0)  # RFC 6298 section 5.7
    c.poll(t + 0.001)
    # The first clean sample sets the RTO from the real 1 ms path.
    c.send(b"a" * 100)
    (data,) = c.poll(t + 0.002)
    c.receive_segment(
        seg(SERVER_ISN + 1, CLIENT_ISN + 101, timestamp=(8, data.timestamp[0])), t + 0.003
    )
    assert c.stats.rtt_samples == 1
    assert c.stats.rto == pytest.approx(cfg.min_rto)


def test_lossy_handshake_does_not_inflate_the_rto_of_a_transfer() -> None:
    """A seeded run over a 1 ms link with loss both ways whose SYN-ACK is lost: no stretch
    without forward progress may reach seconds (it reached 15.8 s with the bogus sample)."""
    from guest.bench.stall_hunt import run_one
    from guest.testing.impairment import LinkConfig

    link = LinkConfig(
        delay=0.001, loss=0.06, duplicate=0.02, corrupt=0.01, reorder=0.25, reorder_delay=0.001
    )
    cfg = TcpConfig(sack=False)
    r = run_one(49, 500_000, False, link, cfg, cfg, None, 600.0)
    assert r.ok
    assert r.worst < 2.0


def test_syn_ack_resent_on_the_peers_timer_is_not_sampled() -> None:
    """Our SYN was resent, the SYN-ACK answering it was lost, and the peer resent that
    SYN-ACK on its own timer a second later: it echoes our latest SYN, so its "RTT" spans
    the peer's timeout, not the path. No SYN-ACK after a resent SYN is timed."""
    from tests.unit.tcp_helpers import client

    cfg = TcpConfig(sack=False, window_scaling=False, delayed_ack=False)
    c = client(cfg)
    c.connect()
    c.poll(10.0)
    t = c.next_timeout()
    (again,) = c.poll(t)  # SYN resent; its SYN-ACK is lost, the peer resends 1 s later
    c.receive_segment(
        seg(SERVER_ISN, CLIENT_ISN + 1, "SA", mss=1000, timestamp=(9, again.timestamp[0])),
        t + 1.001,
    )
    assert c.stats.rtt_samples == 0 and c.stats.srtt is None
    assert c.stats.rto == pytest.approx(3.0)

"""CUBIC (RFC 9438) against the RFC's equations, and selectable per connection."""

from __future__ import annotations

import random

import pytest

from guest.stack.tcp import TcpConfig
from guest.stack.tcp.congestion import NewReno
from guest.stack.tcp.controllers import CONGESTION_CONTROLS
from guest.stack.tcp.cubic import ALPHA, BETA, C, Cubic
from guest.testing.impairment import LinkConfig
from guest.testing.tcp_sim import run_transfer

MSS = 1000


def _in_avoidance(cwnd_segments: int) -> Cubic:
    cc = Cubic(MSS, 10, iss=0)
    cc.cwnd = cwnd_segments * MSS
    cc.ssthresh = cc.cwnd  # congestion avoidance from here
    return cc


def test_the_constants_are_the_rfcs() -> None:
    assert (C, BETA) == (0.4, 0.7)
    assert pytest.approx(3 * 0.3 / 1.7) == ALPHA


def test_a_congestion_event_reduces_by_beta_and_remembers_w_max() -> None:
    cc = _in_avoidance(100)
    cc.on_loss_repaired()
    assert cc.w_max == 100 and cc.cwnd == cc.ssthresh == 70 * MSS
    # Section 4.7 fast convergence: a second event below W_max lowers W_max further.
    cc.on_loss_repaired()
    assert cc.w_max == pytest.approx(70 * (1 + BETA) / 2)
    assert cc.cwnd == 49 * MSS


def test_newreno_halves_the_flight() -> None:
    cc = NewReno(MSS, 10, iss=0)
    cc.cwnd = 100 * MSS
    cc.on_loss_repaired()
    assert cc.cwnd == 50 * MSS


def test_k_and_the_cubic_function() -> None:
    """Equations (1) and (2): from beta * W_max the window is back at W_max after K s."""
    cc = _in_avoidance(100)
    cc.on_loss_repaired()
    cc.on_new_ack(1000, MSS, 10_000, now=10.0, rtt=0.0)  # the epoch starts
    assert cc.k == pytest.approx(((100 - 70) / C) ** (1 / 3))
    assert cc.window_at(0.0) == pytest.approx(70)
    assert cc.window_at(cc.k) == pytest.approx(100)


def _grow(cc: Cubic, seconds: float, rtt: float) -> list[float]:
    """ACK a window's worth every RTT for `seconds`; cwnd in segments after each RTT."""
    now, out = 10.0, []
    while now < 10.0 + seconds:
        for _ in range(cc.cwnd // MSS):
            cc.on_new_ack(0, MSS, 0, now=now, rtt=rtt)
        out.append(cc.cwnd / MSS)
        now += rtt
    return out


def test_growth_is_concave_to_w_max_then_convex_beyond() -> None:
    """With a long RTT (the cubic region), the window climbs fast, flattens near W_max
    around K, then accelerates again."""
    cc = _in_avoidance(200)
    cc.on_loss_repaired()  # W_max 200, cwnd 140, K ~ 5.3 s
    rtt = 0.1
    trace = _grow(cc, 12.0, rtt)
    at = {round(k * rtt, 1): w for k, w in enumerate(trace)}
    k = cc.k
    early = at[1.0] - at[0.0]
    near = at[round(k, 1) + 0.5] - at[round(k, 1) - 0.5]
    late = at[round(k, 1) + 6.0] - at[round(k, 1) + 5.0]
    assert early > near and late > near  # concave, plateau, convex
    assert at[round(k, 1)] == pytest.approx(200, rel=0.05)


def test_with_a_short_rtt_it_grows_at_least_like_reno() -> None:
    """Section 4.3: where Reno would grow faster (short RTT), the Reno-friendly estimate
    sets the pace: about ALPHA segments per RTT, never less than Reno's average."""
    cc = _in_avoidance(100)
    cc.on_loss_repaired()
    trace = _grow(cc, 0.2, rtt=0.001)
    per_rtt = (trace[-1] - trace[0]) / (len(trace) - 1)
    assert per_rtt == pytest.approx(ALPHA, rel=0.2)


def test_the_registry_names_both_and_the_config_refuses_others() -> None:
    assert set(CONGESTION_CONTROLS) == {"newreno", "cubic"}
    with pytest.raises(ValueError, match="'bbr' is not one of newreno, cubic"):
        TcpConfig(cc="bbr")


@pytest.mark.parametrize("cc", sorted(CONGESTION_CONTROLS))
def test_each_controller_moves_data_byte_exact_through_a_lossy_path(cc: str) -> None:
    data = random.Random(9).randbytes(600_000)
    link = LinkConfig(delay=0.01, bandwidth=20e6, queue_bytes=100_000, loss=0.01)
    cfg = TcpConfig(cc=cc)
    r = run_transfer(data, b"", forward=link, backward=link, client_config=cfg, seed=3)
    assert r.completed and r.server_received == data

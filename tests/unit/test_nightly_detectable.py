"""What a night could have seen: the smallest change for the worse each test would flag with
80 % power, checked against seeded nights with that change in them."""

from __future__ import annotations

import math
import random

from host.nightly.metrics import Metric
from host.nightly.pages import markdown
from host.nightly.stats import POWER, Floors, compare, detectable

FLOORS = Floors({"tcg-paired": {"throughput": 0.03}, "tcg": {"throughput": 0.05}})


def night(seed: int, rounds: int, spread: float, factor: float) -> tuple[Metric, Metric]:
    """One metric's rounds on both arms: log-normal round-to-round spread, the candidate's
    true figure `factor` times the baseline's."""
    rng = random.Random(seed)
    base = {r: 100 * math.exp(rng.gauss(0, spread)) for r in range(1, rounds + 1)}
    cand = {r: 100 * factor * math.exp(rng.gauss(0, spread)) for r in base}
    return (
        Metric("lab/mono-stream", "throughput", "higher", True, base),
        Metric("lab/mono-stream", "throughput", "higher", True, cand),
    )


def flagged(seed: int, rounds: int, spread: float, factor: float) -> tuple[bool, float | None]:
    base, cand = night(seed, rounds, spread, factor)
    (c,) = compare([base], [cand], FLOORS, "tcg", paired=True)
    return c.verdict == "regressed", c.detectable


def night_to_night(rounds: int, metrics: int) -> list:
    """`metrics` gated metrics of two nights (no change), compared night to night."""
    nights = [night(seed, rounds, 0.1, 1.0) for seed in range(metrics)]
    base = [
        Metric(f"lab/e{i}", b.figure, b.better, True, b.samples) for i, (b, _) in enumerate(nights)
    ]
    cand = [
        Metric(f"lab/e{i}", c.figure, c.better, True, c.samples) for i, (_, c) in enumerate(nights)
    ]
    return compare(base, cand, FLOORS, "tcg")


def test_a_slowdown_of_the_detectable_size_is_flagged_about_as_often_as_promised() -> None:
    """The figure is a power calculation: seeded nights with exactly that slowdown in them
    must be flagged about POWER of the time, and nights with half of it much less often."""
    rounds, spread = 10, 0.1
    sizes = [flagged(seed, rounds, spread, 1.0)[1] for seed in range(40)]
    size = sorted(s for s in sizes if s is not None)[len(sizes) // 2]  # a typical night's
    assert 0.05 < size < 0.3
    trials = 300
    hit = sum(flagged(1000 + s, rounds, spread, 1 - size)[0] for s in range(trials)) / trials
    half = sum(flagged(5000 + s, rounds, spread, 1 - size / 2)[0] for s in range(trials)) / trials
    assert POWER - 0.2 < hit < POWER + 0.15, hit
    assert half < hit - 0.3, (half, hit)


def test_more_rounds_and_less_spread_see_smaller_changes() -> None:
    def typical(rounds: int, spread: float) -> float:
        found = [flagged(seed, rounds, spread, 1.0)[1] for seed in range(30)]
        return sorted(found)[len(found) // 2]

    assert typical(20, 0.1) < typical(5, 0.1)
    assert typical(10, 0.05) < typical(10, 0.2)


def test_a_rank_test_that_cannot_reach_significance_says_so() -> None:
    """Night to night with 3 rounds a side and 15 gated metrics, the smallest one-sided p of
    the exact rank test (1/20) cannot pass the correction: no change could be flagged."""
    comparisons = night_to_night(rounds=3, metrics=15)
    assert all(c.p_worse is not None and c.detectable is None for c in comparisons)


def test_the_summary_gives_each_gated_metric_its_detectable_change() -> None:
    from host.nightly.outcome import Outcome

    base, cand = night(1, 10, 0.1, 1.0)
    comparisons = compare([base], [cand], FLOORS, "tcg", paired=True)
    outcome = Outcome("2026-12-07T00:00:00Z", candidate=[], baseline=[], comparisons=comparisons)
    text = markdown(outcome)
    assert "| detectable |" in text
    assert f"| {comparisons[0].detectable:.0%} |" in text


def test_a_confirming_rerun_counts_for_what_the_night_to_night_test_can_see() -> None:
    """5 rounds a side against 15 gated metrics: the corrected rank test alone cannot pass
    (its smallest p, 1/252, times 15 is above 0.05), but a suspect gets 3 more rounds."""
    comparisons = night_to_night(rounds=5, metrics=15)
    assert all(c.detectable is None for c in comparisons)
    with_rerun = [detectable(c, 15, extra_rounds=3) for c in comparisons]
    assert all(d is not None and 0.05 < d < 0.6 for d in with_rerun), with_rerun
    # a paired night among 15 metrics: the corrected step binds, and the rerun eases it
    pb, pc = night(3, 5, 0.1, 1.0)
    (paired,) = compare([pb], [pc], FLOORS, "tcg", paired=True)
    assert detectable(paired, 15, extra_rounds=3) < detectable(paired, 15)

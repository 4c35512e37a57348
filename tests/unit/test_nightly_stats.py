"""The nightly's regression test on seeded data: what it flags, what it leaves, and at what
rates (a false alarm in an A/A night, a missed 10 % slowdown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from host.nightly.metrics import extract, kernel_reference
from host.nightly.outcome import compare_sets
from host.nightly.stats import Comparison, Floors, calibrate, compare, decide, regressions, screen
from tests.unit.nightly_data import result_set

FLOORS = Floors(
    {"tcg": {"throughput": 0.15, "p50 latency": 0.15, "throughput/kernel": 0.05}}, default=0.05
)


def by_name(comparisons: list[Comparison]) -> dict[str, Comparison]:
    return {c.name: c for c in comparisons}


def test_user_level_paths_are_gated_on_their_ratio_to_the_kernel_of_the_same_round() -> None:
    data = result_set(seed=1)
    metrics = {m.name: m for m in extract(data)}
    kernel = metrics["nightly/kernel-stream · throughput"].samples
    raw = metrics["nightly/mono-stream · throughput"]
    ratio = metrics["nightly/mono-stream · throughput/kernel"]
    assert ratio.gated and not raw.gated
    assert ratio.samples == {r: raw.samples[r] / kernel[r] for r in kernel}
    # factored's baseline is mono, whose baseline is the kernel: followed to the kernel
    recs = {r["experiment"]: r for r in data["results"]}
    assert kernel_reference(recs["factored-stream"], recs)["experiment"] == "kernel-stream"
    assert "nightly/factored-stream · throughput/kernel" in metrics
    # p99 is compared and shown, never gated
    assert not metrics["nightly/mono-rr · p99 latency/kernel"].gated


def test_a_failed_round_is_left_out_not_counted_as_zero() -> None:
    data = result_set(seed=2)
    data["results"][1]["runs"][2] = {"error": "boom", "error_kind": "experiment", "round": 3}
    ratio = {m.name: m for m in extract(data)}["nightly/mono-stream · throughput/kernel"]
    assert sorted(ratio.samples) == [1, 2, 4, 5]


def test_host_drift_alone_moves_the_kernel_figure_but_not_the_ratios() -> None:
    """The whole host 20 % slower: the raw kernel throughput is below its floor's reach only
    if the floor is wide (it is, for raw figures under TCG); the ratios do not move."""
    base, cand = result_set(seed=3), result_set(seed=4, rounds=8, drift=0.8)
    comparisons = by_name(compare_sets([base], [cand], FLOORS)[0])
    assert comparisons["nightly/kernel-stream · throughput"].verdict == "regressed"
    assert comparisons["nightly/mono-stream · throughput/kernel"].verdict == "unchanged"
    assert comparisons["nightly/factored-stream · throughput/kernel"].verdict == "unchanged"


def test_a_ten_percent_slowdown_of_mono_is_flagged_on_exactly_the_metrics_it_hurts() -> None:
    base = result_set(seed=5)
    cand = result_set(seed=6, rounds=8, mono_factor=0.9)  # 5 rounds + a 3-round rerun
    comparisons = compare_sets([base], [cand], FLOORS)[0]
    flagged = {c.name for c in regressions(comparisons)}
    assert "nightly/mono-stream · throughput/kernel" in flagged
    # factored runs mono's code, so it may be hit too; nothing else may be
    assert flagged <= {
        "nightly/mono-stream · throughput/kernel",
        "nightly/factored-stream · throughput/kernel",
    }
    hit = by_name(comparisons)["nightly/mono-stream · throughput/kernel"]
    assert hit.high < 1 - hit.floor and hit.p_adjusted < 0.05
    assert 0.85 < hit.ratio < 0.95


def test_the_floor_hides_a_real_change_smaller_than_the_night_to_night_noise() -> None:
    base = result_set(seed=5)
    cand = result_set(seed=6, rounds=8, mono_factor=0.9)
    wide = Floors({"tcg": {"throughput/kernel": 0.15}})
    assert not regressions(compare_sets([base], [cand], wide)[0])


def test_the_screen_names_suspects_before_any_correction() -> None:
    """The screen (uncorrected p, interval beyond the floor) names the suspects for the
    confirming rerun; whatever the corrected test flags is among them."""
    base, cand = result_set(seed=5), result_set(seed=6, mono_factor=0.9)
    comparisons = compare_sets([base], [cand], FLOORS)[0]
    suspects = {c.name for c in screen(comparisons)}
    assert "nightly/mono-stream · throughput/kernel" in suspects
    assert {c.name for c in regressions(comparisons)} <= suspects


def test_latency_regresses_upwards() -> None:
    base = [1000.0, 1010, 990, 1005, 995]
    worse = [1200.0, 1210, 1190, 1205, 1195, 1200, 1202, 1198]
    from host.nightly.metrics import Metric

    def metric(values: list[float]) -> Metric:
        return Metric("lab/rr", "p50 latency", "lower", True, dict(enumerate(values, 1)))

    (c,) = compare([metric(base)], [metric(worse)], Floors(default=0.05), "tcg")
    assert c.verdict == "regressed" and c.low > 1.05
    (c,) = compare([metric(worse)], [metric(base + base[:3])], Floors(default=0.05), "tcg")
    assert c.verdict == "improved"


def test_too_few_rounds_or_a_missing_side_is_said_not_guessed() -> None:
    base, cand = result_set(seed=7, rounds=2), result_set(seed=8, rounds=5)
    cand["results"].pop(0)  # the candidate lost kernel-stream altogether
    comparisons = by_name(compare_sets([base], [cand], FLOORS)[0])
    assert comparisons["nightly/mono-rr · p50 latency/kernel"].verdict == "insufficient"
    assert comparisons["nightly/kernel-stream · throughput"].verdict == "missing"
    # without the kernel's rounds the candidate's ratio cannot be formed: missing too
    assert comparisons["nightly/mono-stream · throughput/kernel"].verdict == "missing"


@pytest.mark.parametrize("trial_count", [60])
def test_false_alarms_and_misses_over_seeded_nights(trial_count: int) -> None:
    """Seeded A/A nights (3 % round noise, 10 % host drift between nights) raise no alarm;
    a 10 % slowdown of mono is caught in at least 9 nights of 10 (8 rounds against 5)."""
    alarms = misses = 0
    for seed in range(trial_count):
        base = result_set(seed=1000 + seed, drift=1.0)
        same = result_set(seed=2000 + seed, rounds=8, drift=0.9 + 0.2 * (seed % 2))
        slow = result_set(seed=3000 + seed, rounds=8, mono_factor=0.9)
        alarms += bool(regressions(compare_sets([base], [same], FLOORS)[0]))
        caught = {c.name for c in regressions(compare_sets([base], [slow], FLOORS)[0])}
        misses += "nightly/mono-stream · throughput/kernel" not in caught
    assert alarms == 0
    assert misses <= trial_count // 10


def test_benjamini_hochberg_is_applied_over_the_gated_metrics_only() -> None:
    def comparison(name: str, p: float, gated: bool) -> Comparison:
        c = Comparison(name, "throughput", "higher", gated, [1.0] * 5, [0.8] * 5, 0.05)
        c.ratio, c.low, c.high, c.p_worse, c.p_better = 0.8, 0.75, 0.85, p, 1.0
        return c

    cs = [comparison(f"g{i}", 0.01, True) for i in range(4)] + [comparison("s", 1e-6, False)]
    decide(cs)
    assert all(c.p_adjusted == pytest.approx(0.01) for c in cs[:4])  # BH: equal p's stay
    assert cs[-1].p_adjusted is None and cs[-1].verdict == "regressed"  # shown, not gated
    assert len(regressions(cs)) == 4
    cs = [comparison("g0", 0.01, True)] + [comparison(f"x{i}", 0.9, True) for i in range(9)]
    decide(cs)
    assert cs[0].p_adjusted == pytest.approx(0.1) and cs[0].verdict == "unchanged"


def test_floors_file_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    good = tmp_path / "floors.yaml"
    good.write_text("default: 0.04\ntcg:\n  throughput: 0.2\n")
    floors = Floors.load(good)
    assert floors.floor("tcg", "throughput") == 0.2
    assert floors.floor("kvm", "throughput") == 0.04
    bad = tmp_path / "bad.yaml"
    bad.write_text("tcg:\n  throughput: 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml: tcg.throughput: .*\[0, 1\)"):
        Floors.load(bad)


def test_calibration_takes_the_largest_aa_distance_with_a_margin() -> None:
    base, cand = result_set(seed=9), result_set(seed=10)
    comparisons = compare_sets([base], [cand], FLOORS)[0]
    floors = calibrate([comparisons])
    worst = max(
        abs(c.ratio - 1) for c in comparisons if c.figure == "throughput/kernel" and c.gated
    )
    assert floors["throughput/kernel"] >= worst * 1.25
    assert floors["throughput/kernel"] < worst * 1.25 + 0.011

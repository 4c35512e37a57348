"""The report's baseline ratios: paired round by round, failed runs left out, gaps explained."""

from __future__ import annotations

import pytest

from host.report import comparison_table, comparisons


def record(name: str, kind: str, runs: list[dict], baseline: str | None = None) -> dict:
    return {"experiment": name, "type": kind, "baseline": baseline, "runs": runs}


def stream_runs(*mbits: float | None) -> list[dict]:
    """One run per round; None stands for a failed run."""
    return [
        {"error": "boom", "round": r} if v is None else {"mbit_per_s": v, "round": r}
        for r, v in enumerate(mbits, start=1)
    ]


def test_ratios_are_paired_by_round_and_summarised_by_median() -> None:
    results = [
        record("mono", "stream", stream_runs(100, 50, 80)),
        record("factored", "stream", stream_runs(90, 50, 88), baseline="mono"),
    ]
    (row,) = comparisons(results)
    # Round by round: 0.9, 1.0, 1.1. Unpaired medians would give 88/80 = 1.1 instead.
    assert row["ratios"] == pytest.approx([0.9, 1.0, 1.1])
    assert row["median"] == pytest.approx(1.0)
    assert (row["min"], row["max"]) == (pytest.approx(0.9), pytest.approx(1.1))
    assert row["figure"] == "throughput" and row["rounds"] == [1, 2, 3]


def test_rr_compares_p50_and_repeats_within_a_round_take_their_median() -> None:
    base = [{"p50_us": v, "round": 1} for v in (100, 200, 300)]
    mine = [{"p50_us": 330, "round": 1}]
    (row,) = comparisons([record("a", "rr", base), record("b", "rr", mine, baseline="a")])
    assert row["key"] == "p50_us"
    assert row["ratios"] == pytest.approx([1.65])


def test_a_round_where_either_side_failed_is_left_out() -> None:
    results = [
        record("mono", "stream", stream_runs(100, None, 80)),
        record("factored", "stream", stream_runs(None, 70, 40), baseline="mono"),
    ]
    (row,) = comparisons(results)
    assert row["rounds"] == [3] and row["ratios"] == pytest.approx([0.5])


def test_missing_baseline_or_no_common_round_is_said() -> None:
    results = [
        record("mono", "stream", stream_runs(None)),
        record("factored", "stream", stream_runs(10), baseline="mono"),
        record("copy", "stream", stream_runs(10), baseline="not-run"),
        record("plain", "stream", stream_runs(10)),
    ]
    rows = {row["experiment"]: row for row in comparisons(results)}
    assert set(rows) == {"factored", "copy"}  # "plain" names no baseline
    assert rows["factored"]["missing"] == "no round where both succeeded"
    assert rows["copy"]["missing"] == "baseline not run"
    table = comparison_table({"metadata": {"rounds": 1}, "results": results})
    assert table is not None and table.row_count == 2


def test_no_table_without_baselines() -> None:
    data = {"metadata": {}, "results": [record("mono", "stream", stream_runs(1))]}
    assert comparison_table(data) is None


def test_results_saved_before_rounds_existed_pair_as_round_one() -> None:
    old = [{"mbit_per_s": 50.0}]  # no "round": a file from before --rounds
    results = [record("m", "stream", old), record("f", "stream", [{"mbit_per_s": 45.0}], "m")]
    (row,) = comparisons(results)
    assert row["ratios"] == pytest.approx([0.9])

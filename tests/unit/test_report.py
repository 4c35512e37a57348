"""The report's baseline ratios: paired round by round, failed runs left out, gaps explained.
Its figures against forwarding hops: grouped by series, ordered by hops, only where hops vary."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from host.report import comparison_table, comparisons, hop_series, plot


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


def test_user_level_stacks_are_also_compared_with_the_floor_of_their_type() -> None:
    def on(rec: dict, path: str, client: str = "a") -> dict:
        return rec | {"path": path, "client": client, "server": "b"}

    results = [
        on(record("kernel-stream", "stream", stream_runs(400, 300)), "kernel"),
        on(record("floor-stream", "stream", stream_runs(200, 150), "kernel-stream"), "floor"),
        on(record("mono-stream", "stream", stream_runs(50, 30), "kernel-stream"), "mono"),
        on(record("factored-stream", "stream", stream_runs(40, 30), "mono-stream"), "factored"),
        # Other ends, or another type: no floor of theirs was run.
        on(record("mono-rev", "stream", stream_runs(50, 30), "kernel-stream"), "mono", "c"),
        on(record("mono-rr", "rr", [{"p50_us": 900, "round": 1}]), "mono"),
    ]
    pairs = {(row["experiment"], row["baseline"]): row for row in comparisons(results)}
    assert set(pairs) == {
        ("floor-stream", "kernel-stream"),
        ("mono-stream", "kernel-stream"),
        ("factored-stream", "mono-stream"),
        ("mono-rev", "kernel-stream"),
        ("mono-stream", "floor-stream"),
        ("factored-stream", "floor-stream"),
    }
    assert pairs[("mono-stream", "floor-stream")]["ratios"] == pytest.approx([0.25, 0.2])


def test_no_table_without_baselines() -> None:
    data = {"metadata": {}, "results": [record("mono", "stream", stream_runs(1))]}
    assert comparison_table(data) is None


def test_results_saved_before_rounds_existed_pair_as_round_one() -> None:
    old = [{"mbit_per_s": 50.0}]  # no "round": a file from before --rounds
    results = [record("m", "stream", old), record("f", "stream", [{"mbit_per_s": 45.0}], "m")]
    (row,) = comparisons(results)
    assert row["ratios"] == pytest.approx([0.9])


def routed(name: str, kind: str, hops: int | None, runs: list[dict], **extra) -> dict:
    """A saved record: `hops` forwarding nodes between c and s (None: saved before routes)."""
    ok = [run for run in runs if "error" not in run]
    keys = {k for run in ok for k in run if k != "round"}
    summary = {k: sorted(run[k] for run in ok)[len(ok) // 2] for k in keys} if ok else None
    rec = record(name, kind, runs) | {"path": "kernel", "stack": None, "summary": summary}
    rec |= {"errors": [run["error"] for run in runs if "error" in run]}
    if hops is not None:
        nodes = ["c", *(f"r{i}" for i in range(1, hops + 1)), "s"]
        rec["route"] = {"nodes": nodes, "links": [f"l{i}" for i in range(hops + 1)]}
    return rec | extra


def rr_runs(p50: float, p99: float) -> list[dict]:
    return [{"p50_us": p50, "p99_us": p99, "round": 1}]


def sweep(hops: list[int]) -> list[dict]:
    """A kernel stream and rr at each hop count, listed farthest first."""
    out = []
    for h in sorted(hops, reverse=True):
        out.append(routed(f"stream-{h}", "stream", h, stream_runs(1000 / (h + 1))))
        out.append(routed(f"rr-{h}", "rr", h, rr_runs(100.0 * (h + 1), 300.0 * (h + 1))))
    return out


def test_hop_series_groups_by_type_and_path_and_orders_by_hops() -> None:
    mono = {"device": "packet", "offload": "all", "link": "copy"}
    results = [
        *sweep([0, 1, 2]),
        routed("mono-2", "stream", 2, stream_runs(30), path="mono", stack=mono),
        routed("mono-0", "stream", 0, stream_runs(90), path="mono", stack=mono),
    ]
    series = hop_series({"results": results})
    assert list(series) == ["kernel stream", "kernel rr", "mono (all; socket) stream"]
    stream, rr, mono_stream = series.values()
    assert (stream.panel, rr.panel) == ("throughput", "latency")
    assert [(p.hops, p.value) for p in stream.points] == [
        (0, pytest.approx(1000)),
        (1, pytest.approx(500)),
        (2, pytest.approx(1000 / 3)),
    ]
    assert [(p.hops, p.value, p.p99) for p in rr.points] == [
        (0, 100, 300),
        (1, 200, 600),
        (2, 300, 900),
    ]
    assert [(p.hops, p.experiment) for p in mono_stream.points] == [(0, "mono-0"), (2, "mono-2")]
    assert stream.points[0].p99 is None


def test_hop_series_leaves_out_failed_routeless_and_unplotted_records() -> None:
    results = [
        routed("ok-0", "stream", 0, stream_runs(100)),
        routed("ok-1", "stream", 1, stream_runs(50)),
        routed("failed-2", "stream", 2, stream_runs(None)),
        routed("old", "stream", None, stream_runs(70)),
        routed("ping-3", "ping", 3, [{"rtt_avg_us": 900.0, "p50_us": None}]),
    ]
    assert results[2]["summary"] is None
    (stream,) = hop_series({"results": results}).values()
    assert [p.experiment for p in stream.points] == ["ok-0", "ok-1"]


def test_no_hop_series_for_a_single_hop_count() -> None:
    assert hop_series({"results": sweep([1])}) == {}
    # Records at other hop counts that failed, or carry no route, do not make a second one.
    results = [
        *sweep([0]),
        routed("failed-2", "stream", 2, stream_runs(None)),
        routed("old", "rr", None, rr_runs(1, 2)),
    ]
    assert hop_series({"results": results}) == {}


def test_hop_points_carry_each_rounds_figure_failed_rounds_left_out() -> None:
    runs = [
        {"mbit_per_s": 10.0, "round": 1},
        {"mbit_per_s": 30.0, "round": 1},  # a repeat: the round's figure is their median
        {"error": "boom", "round": 2},
        {"mbit_per_s": 40.0, "round": 3},
    ]
    results = [routed("a", "stream", 0, runs), routed("b", "stream", 3, stream_runs(5))]
    a, b = hop_series({"results": results})["kernel stream"].points
    assert a.rounds == (20.0, 40.0)
    assert b.rounds == (5,)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's header chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def write_results(path: Path, results: list[dict], created: str) -> Path:
    meta = {"created": created, "accel": "tcg", "rounds": 1}
    path.write_text(json.dumps({"metadata": meta, "results": results}))
    return path


def test_plot_adds_a_row_against_hops_only_when_hops_vary(tmp_path: Path) -> None:
    flat = write_results(tmp_path / "flat.json", sweep([0]), "2025-01-01T00:00:00Z")
    chain = write_results(tmp_path / "chain.json", sweep([0, 1, 2]), "2025-01-02T00:00:00Z")
    one_row = plot([flat], tmp_path / "flat.png")
    two_rows = plot([chain, flat], tmp_path / "both.png")
    (w1, h1), (w2, h2) = png_size(one_row), png_size(two_rows)
    assert w1 == w2 and h2 > 1.8 * h1


def test_stack_costs_per_transaction_and_per_megabyte_by_layer() -> None:
    from host.report import stack_cost_table, stack_costs

    side = {
        "cpu": {"user_s": 0.9, "system_s": 0.1},
        "loop": {"passes": 2000},
        "profile": {"layers": {"tcp": 1.5, "wire": 0.5}, "cpu_s": 2.0, "wait_s": 9.0},
    }
    rr = record("mono-rr", "rr", [{"round": 1, "transactions": 1000, "stack": {"client": side}}])
    (cost,) = stack_costs(rr)
    assert cost["side"] == "client" and cost["unit"] == "transaction"
    assert cost["cpu_us"] == pytest.approx(1000.0) and cost["passes"] == pytest.approx(2.0)
    assert cost["layers"] == {"tcp": pytest.approx(0.75), "wire": pytest.approx(0.25)}
    plain = {"cpu": {"user_s": 2.0, "system_s": 0.0}}
    stream = record(
        "mono-stream",
        "stream",
        [
            {"error": "boom", "round": 1},
            {"round": 2, "bytes": 4_000_000, "stack": {"client": plain, "server": plain}},
        ],
    )
    costs = stack_costs(stream)
    assert [c["unit"] for c in costs] == ["MB", "MB"]
    assert costs[0]["cpu_us"] == pytest.approx(500_000.0) and "layers" not in costs[0]
    kernel = record("kernel-rr", "rr", [{"round": 1, "transactions": 10, "stack": None}])
    assert stack_costs(kernel) == []
    table = stack_cost_table({"results": [kernel, rr, stream]})
    assert table is not None and table.row_count == 3

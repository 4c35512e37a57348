"""The nightly's last step on seeded result sets: what it writes, the status it returns, and
which experiments a confirming rerun takes."""

from __future__ import annotations

import json
from pathlib import Path

from junitparser import Failure, JUnitXml

from host.bench import extend
from host.nightly import history
from host.nightly.outcome import FAULT, OK, REGRESSED, Outcome
from host.nightly.run import Plan, _provisional, _rerun_names, confirm, finish
from host.nightly.stats import Floors
from tests.unit.nightly_data import result_set

FLOORS = Floors({"tcg": {"throughput": 0.15, "p50 latency": 0.15}}, default=0.05)


def night(tmp_path: Path, cand: dict, base: dict | None, faults=()) -> tuple[Outcome, Plan]:
    plan = Plan(
        configs=[],
        out=tmp_path / "out",
        baseline=[base] if base else None,
        floors=FLOORS,
        history=tmp_path / "history.csv",
    )
    plan.out.mkdir()
    outcome = Outcome("2026-12-06T02:30:00Z", [cand], faults=list(faults))
    return finish(outcome, plan, lambda _m: None), plan


def test_a_confirmed_regression_fails_and_every_output_is_written(tmp_path: Path) -> None:
    cand = result_set(seed=6, rounds=8, mono_factor=0.85)
    cand["metadata"]["confirmed"] = ["mono-stream", "factored-stream"]
    outcome, plan = night(tmp_path, cand, result_set(seed=5))
    assert outcome.status == REGRESSED
    assert {c.experiment for c in outcome.regressions} <= {
        "nightly/mono-stream",
        "nightly/factored-stream",
    }
    assert all(c.confirmed for c in outcome.regressions)
    names = {p.name for p in plan.out.iterdir()}
    assert {"results.json", "junit.xml", "report.html", "summary.md"} <= names
    saved = json.loads((plan.out / "results.json").read_text())
    assert saved["nightly"]["status"] == REGRESSED and saved["labs"][0]["results"]
    failures = [
        case.name
        for suite in JUnitXml.fromfile(str(plan.out / "junit.xml"))
        for case in suite
        if any(isinstance(r, Failure) for r in case.result)
    ]
    assert "nightly/mono-stream · throughput/kernel" in failures
    rows = history.load(plan.history)
    assert {r.metric for r in rows} >= {"throughput", "throughput/kernel", "p50 latency"}


def test_a_regression_never_rerun_is_not_reported_as_one(tmp_path: Path) -> None:
    outcome, _ = night(tmp_path, result_set(seed=6, rounds=8, mono_factor=0.85), result_set(5))
    assert outcome.status == OK
    assert any(c.verdict == "regressed" and c.confirmed is False for c in outcome.comparisons)


def test_a_fault_outranks_the_rest_and_no_baseline_only_records(tmp_path: Path) -> None:
    outcome, plan = night(tmp_path, result_set(seed=6), None, ["lab x: guest m never booted"])
    assert outcome.status == FAULT
    xml = JUnitXml.fromfile(str(plan.out / "junit.xml"))
    assert [s.name for s in xml] == ["benchmarks.nightly", "infrastructure.nightly"]
    assert "No baseline" in (plan.out / "report.html").read_text()


def test_an_incomparable_baseline_is_a_fault_naming_the_difference(tmp_path: Path) -> None:
    outcome, _ = night(tmp_path, result_set(seed=6), result_set(seed=5, accel="kvm"))
    assert outcome.status == FAULT and "accel: kvm -> tcg" in outcome.faults[0]


def test_a_rerun_takes_the_suspects_and_their_kernel_references() -> None:
    data = result_set(seed=1)
    assert _rerun_names(data, {"nightly/factored-stream"}) == ["kernel-stream", "factored-stream"]
    assert _rerun_names(data, {"nightly/kernel-rr"}) == ["kernel-rr"]


def test_suspects_are_rerun_and_their_rounds_decide(tmp_path: Path) -> None:
    """The whole confirming path: the screen names mono's ratio; the rerun (rounds 6-8 of
    mono and its kernel reference) joins the night's; the corrected test then confirms."""
    base = result_set(seed=5)
    cand = result_set(seed=6, mono_factor=0.85)
    plan = Plan(configs=[], out=tmp_path / "out", baseline=[base], floors=FLOORS, history=None)
    flagged = _provisional(cand, None, plan, lambda _m: None)
    assert "nightly/mono-stream" in flagged
    asked: list[tuple[list[str], int]] = []

    def rerun(names: list[str], rounds: int) -> None:
        asked.append((names, rounds))
        more = result_set(seed=7, rounds=rounds, mono_factor=0.85)
        for rec in more["results"]:
            for run in rec["runs"]:
                run["round"] += 5
        extend(cand["results"], [rec for rec in more["results"] if rec["experiment"] in names])

    confirm(cand, flagged, 3, rerun, lambda _m: None)
    assert asked[0][1] == 3 and {"kernel-stream", "mono-stream"} <= set(asked[0][0])
    mono = next(r for r in cand["results"] if r["experiment"] == "mono-stream")
    assert [r["round"] for r in mono["runs"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    plan.out.mkdir()
    outcome = finish(Outcome("2026-12-06T02:30:00Z", [cand]), plan, lambda _m: None)
    hit = {c.name: c for c in outcome.regressions}
    assert hit["nightly/mono-stream · throughput/kernel"].confirmed is True
    assert outcome.status == REGRESSED

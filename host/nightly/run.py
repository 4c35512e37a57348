"""`invoke nightly`: the test tiers, then each lab file's benchmarks over several interleaved
rounds, compared with a baseline, a confirming rerun of what looks regressed, and the
outputs (results JSON, JUnit, HTML, Markdown, history).

Everything the run is given is checked before anything starts (lab files, baseline, floors,
tiers); a lab that does not come up, or a guest lost mid-run, is an infrastructure fault
recorded with what broke, and the run goes on with what it can still do.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from junitparser import JUnitXml, TestSuite

from host.bench import extend, metadata, run_experiments, source_revision
from host.config import LabConfig
from host.health import lost_nodes
from host.lab import Lab, LabError
from host.nightly import history, junit, pages
from host.nightly.fingerprint import Incomparable, digest, fingerprint
from host.nightly.metrics import extract, kernel_reference
from host.nightly.outcome import Outcome, Tier, compare_sets
from host.nightly.stats import Floors, compare, screen
from host.paths import PROJECT_ROOT
from host.ssh import GuestError

#: The test tiers, as pytest marker expressions, in the order they run.
TIERS = {"unit": "not vm and not netns", "netns": "netns", "vm": "vm"}

Progress = Callable[[str], None]


@dataclass
class Plan:
    """What one nightly run does, all checked before it starts."""

    configs: list[LabConfig]
    out: Path
    rounds: int = 5
    confirm_rounds: int = 3
    tiers: list[str] = field(default_factory=lambda: list(TIERS))
    baseline: list[dict] | None = None
    baseline_path: Path | None = None
    floors: Floors = field(default_factory=Floors)
    history: Path | None = None
    allow_different: bool = False
    accel: str | None = None


def run_tier(name: str, out: Path, progress: Progress) -> Tier:
    """One tier's pytest run, its JUnit report and log in `out`."""
    report, log = out / f"tests-{name}.xml", out / f"tests-{name}.log"
    progress(f"tests: {name} tier (log: {log})")
    start = time.monotonic()
    with log.open("w") as fh:
        args = ["-q", "-p", "no:cacheprovider", "-m", TIERS[name], f"--junitxml={report}"]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", *args, "-o", "junit_family=xunit2", "tests"],
            cwd=PROJECT_ROOT,
            env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)},
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    tier = Tier(name, returncode=proc.returncode, time=time.monotonic() - start)
    if report.exists():
        xml = JUnitXml.fromfile(str(report))
        for suite in [xml] if isinstance(xml, TestSuite) else list(xml):
            tier.tests += suite.tests
            tier.failures += suite.failures
            tier.errors += suite.errors
            tier.skipped += suite.skipped
        tier.report = report.name
    progress(
        f"tests: {name}: {tier.tests} tests, {tier.failures} failed, {tier.errors} errors, "
        f"{tier.skipped} skipped in {tier.time:.0f} s"
    )
    return tier


def _rerun_names(data: dict, flagged: set[str]) -> list[str]:
    """The experiments to run again to confirm `flagged` ("LAB/NAME"): those, and the
    kernel-path experiments their gated ratios are measured against."""
    lab = data["metadata"]["lab"]
    by_name = {rec["experiment"]: rec for rec in data["results"]}
    names: set[str] = set()
    for rec in data["results"]:
        if f"{lab}/{rec['experiment']}" in flagged:
            names.add(rec["experiment"])
            if (ref := kernel_reference(rec, by_name)) is not None:
                names.add(ref["experiment"])
    return [rec["experiment"] for rec in data["results"] if rec["experiment"] in names]


def confirm(
    data: dict,
    flagged: set[str],
    rounds: int,
    rerun: Callable[[list[str], int], list[dict]],
    progress: Progress,
) -> None:
    """Rerun the suspects (`flagged`, "LAB/NAME") with their kernel references for `rounds`
    more rounds, and add those rounds to the night's; the metadata says what was rerun."""
    names = _rerun_names(data, flagged)
    progress(f"confirming {', '.join(sorted(flagged))}: {rounds} more rounds of {', '.join(names)}")
    extend(data["results"], rerun(names, rounds))
    data["metadata"]["confirm_rounds"] = rounds
    # the experiments' own names, as the lab file gives them
    data["metadata"]["confirmed"] = sorted(f.split("/", 1)[1] for f in flagged)


def run_lab(cfg: LabConfig, plan: Plan, progress: Progress) -> tuple[dict | None, list[str]]:
    """One lab's rounds and, if a gated metric looks regressed against the baseline, a
    confirming rerun of those experiments in the same lab. Returns the result set (None
    if the lab never came up) and the infrastructure faults met."""
    from host.accel import accel_for

    faults: list[str] = []
    try:
        with Lab(cfg, accel=accel_for(cfg.image, plan.accel, progress), progress=progress) as lab:
            revision = source_revision()  # what lab.up deploys
            state = lab.up()

            def health() -> dict[str, str]:
                return lost_nodes(state)

            records = run_experiments(
                cfg, state, lab.guest, None, progress, plan.rounds, health=health
            )
            data = {
                "metadata": metadata(cfg, state, lab.image.manifest, plan.rounds, revision),
                "results": records,
            }
            flagged = _provisional(data, plan, progress)
            if flagged and plan.confirm_rounds > 0:

                def rerun(names: list[str], rounds: int) -> list[dict]:
                    return run_experiments(
                        cfg,
                        state,
                        lab.guest,
                        names,
                        progress,
                        rounds,
                        health=health,
                        first_round=plan.rounds + 1,
                    )

                confirm(data, flagged, plan.confirm_rounds, rerun, progress)
    except (LabError, GuestError, OSError) as err:
        faults.append(f"lab {cfg.lab} ({cfg.source_path}): {err}")
        progress(f"FAULT: lab {cfg.lab}: {str(err).splitlines()[0]}")
        return None, faults
    return data, faults


def _provisional(data: dict, plan: Plan, progress: Progress) -> set[str]:
    """The gated metrics of this lab that look regressed against the baseline now."""
    if plan.baseline is None:
        return set()
    try:
        comparisons, _ = compare_sets(plan.baseline, [data], plan.floors, plan.allow_different)
    except Incomparable:
        return set()  # reported once, when the night's results are compared
    suspects = screen(comparisons)
    if suspects:
        progress(f"looks regressed: {', '.join(sorted(c.name for c in suspects))}")
    return {c.experiment for c in suspects}


def _history_rows(outcome: Outcome) -> list[history.HistoryRow]:
    rows = []
    for data in outcome.candidate:
        meta = data["metadata"]
        fp = digest(fingerprint(meta))
        for m in extract(data):
            if not m.gated or not m.samples:
                continue
            values = m.values
            rows.append(
                history.HistoryRow(
                    created=meta["created"],
                    commit=meta.get("git_commit") or "unknown",
                    fingerprint=fp,
                    accel=meta["accel"],
                    experiment=m.experiment,
                    metric=m.figure,
                    better=m.better,
                    median=statistics.median(values),
                    low=min(values),
                    high=max(values),
                    rounds=len(values),
                )
            )
    return rows


def finish(outcome: Outcome, plan: Plan, progress: Progress) -> Outcome:
    """Compare with the baseline and write every output into `plan.out`."""
    if plan.baseline is not None and outcome.candidate:
        try:
            comparisons, diffs = compare_sets(
                plan.baseline, outcome.candidate, plan.floors, plan.allow_different
            )
        except Incomparable as err:
            outcome.faults.append(f"baseline {plan.baseline_path}: {err}")
        else:
            outcome.comparisons, outcome.differences = comparisons, diffs
            confirmed = {
                name
                for data in outcome.candidate
                for name in (
                    f"{data['metadata']['lab']}/{e}" for e in data["metadata"].get("confirmed", [])
                )
            }
            for c in outcome.comparisons:
                if c.gated and c.verdict == "regressed":
                    c.confirmed = c.experiment in confirmed
    outcome.baseline = plan.baseline
    out = plan.out
    results = out / "results.json"
    results.write_text(
        json.dumps({"nightly": outcome.as_dict(), "labs": outcome.candidate}, indent=2) + "\n"
    )
    suites = junit.tier_suites({t.name: out / t.report for t in outcome.tiers if t.report})
    failed_runs = outcome.experiment_errors()
    for data in outcome.candidate:
        lab = data["metadata"]["lab"]
        mine = [c for c in outcome.comparisons if c.experiment.startswith(f"{lab}/")]
        if not mine:  # no baseline: each metric still gets its case, with its figures
            mine = compare([], extract(data), plan.floors, data["metadata"]["accel"])
        errors = {k: v for k, v in failed_runs.items() if k.startswith(f"{lab}/")}
        suites.append(
            junit.benchmark_suite(lab, mine, errors, outcome.elapsed_s, plan.baseline is not None)
        )
    if outcome.faults:
        suites.append(junit.fault_suite("nightly", outcome.faults))
    junit.write(out / "junit.xml", suites)
    pages.write(outcome, out)
    if plan.history is not None and outcome.candidate:
        history.append(plan.history, _history_rows(outcome))
        progress(f"history: {plan.history}")
    progress(f"outputs: {out}/ (results.json, junit.xml, report.html, summary.md)")
    return outcome


def run(plan: Plan, progress: Progress = print) -> Outcome:
    start = time.monotonic()
    plan.out.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        candidate=[],
        floors=plan.floors.source,
        confirm_rounds=plan.confirm_rounds,
    )
    for name in plan.tiers:
        outcome.tiers.append(run_tier(name, plan.out, progress))
    for cfg in plan.configs:
        data, faults = run_lab(cfg, plan, progress)
        outcome.faults += faults
        if data is not None:
            outcome.candidate.append(data)
    outcome.elapsed_s = time.monotonic() - start
    return finish(outcome, plan, progress)

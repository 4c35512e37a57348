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
from host.nightly import history, junit, pages, paired
from host.nightly.fingerprint import Incomparable, digest, fingerprint
from host.nightly.metrics import extract, kernel_reference
from host.nightly.outcome import Outcome, Tier, compare_sets
from host.nightly.stats import Floors, compare, detectable, screen
from host.paths import PROJECT_ROOT
from host.ssh import GuestError, guest_tarball

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
    baseline_rev: str | None = None  # a commit: its guest code measured in the same night

    @property
    def paired(self) -> bool:
        """Whether the baseline is measured round by round beside the candidate."""
        return self.baseline_rev is not None


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
    rerun: Callable[[list[str], int], None],
    progress: Progress,
) -> None:
    """Rerun the suspects (`flagged`, "LAB/NAME") with their kernel references for `rounds`
    more rounds (`rerun` adds them to the night's records), and say so in the metadata."""
    names = _rerun_names(data, flagged)
    progress(f"confirming {', '.join(sorted(flagged))}: {rounds} more rounds of {', '.join(names)}")
    rerun(names, rounds)
    data["metadata"]["confirm_rounds"] = rounds
    # the experiments' own names, as the lab file gives them
    data["metadata"]["confirmed"] = sorted(f.split("/", 1)[1] for f in flagged)


@dataclass
class LabRun:
    """What one lab gave: the candidate's result set, the same night's baseline set (with
    `--baseline-rev`), and the infrastructure faults met."""

    data: dict | None = None
    baseline: dict | None = None
    faults: list[str] = field(default_factory=list)


#: Rounds of a lab's experiments: (names or None for all, rounds, first round, progress,
#: rounds in all for the progress lines).
Rounds = Callable[[list[str] | None, int, int, Progress, int | None], list[dict]]


def run_lab(cfg: LabConfig, plan: Plan, progress: Progress) -> LabRun:
    """One lab's rounds and, if a gated metric looks regressed against the baseline, a
    confirming rerun of those experiments in the same lab. With `plan.baseline_rev` each
    round runs twice, once with each revision's guest code (`host/nightly/paired.py`)."""
    from host.accel import accel_for

    faults: list[str] = []  # a same-night run's failed deployments; the rest is kept
    try:
        with Lab(cfg, accel=accel_for(cfg.image, plan.accel, progress), progress=progress) as lab:
            revision = source_revision()  # what lab.up deploys
            state = lab.up()

            def rounds_of(names, rounds: int, first: int, said: Progress, of=None) -> list[dict]:
                return run_experiments(
                    cfg,
                    state,
                    lab.guest,
                    names,
                    said,
                    rounds,
                    health=lambda: lost_nodes(state),
                    first_round=first,
                    of_rounds=of,
                )

            def meta(rev: dict) -> dict:
                return metadata(cfg, state, lab.image.manifest, plan.rounds, rev)

            base: dict | None = None
            if plan.baseline_rev is None:
                data = {
                    "metadata": meta(revision),
                    "results": rounds_of(None, plan.rounds, 1, progress),
                }

                def rerun(names: list[str], rounds: int) -> None:
                    extend(data["results"], rounds_of(names, rounds, plan.rounds + 1, progress))

            else:
                deploy = _deployers(plan.baseline_rev, [lab.guest(n.name) for n in state.nodes])
                data, base, rerun = _paired_night(plan, deploy, rounds_of, progress, faults)
                data["metadata"] = meta(revision)
                base["metadata"] = meta({"git_commit": plan.baseline_rev, "git_dirty": False})
            flagged = _provisional(data, base, plan, progress)
            if flagged and plan.confirm_rounds > 0:
                confirm(data, flagged, plan.confirm_rounds, rerun, progress)
                if base is not None:
                    base["metadata"]["confirm_rounds"] = plan.confirm_rounds
    except (LabError, GuestError, OSError) as err:
        progress(f"FAULT: lab {cfg.lab}: {str(err).splitlines()[0]}")
        return LabRun(faults=[f"lab {cfg.lab} ({cfg.source_path}): {err}"])
    return LabRun(data, base, [f"lab {cfg.lab} ({cfg.source_path}): {f}" for f in faults])


def _deployers(baseline_rev: str, guests: list) -> dict[str, Callable[[], None]]:
    """Put each arm's guest code on every guest: this tree's as it was when the night
    began (an edit during the run is not measured), or the revision's."""
    tarballs = {
        paired.CANDIDATE: guest_tarball(),
        paired.BASELINE: paired.revision_tarball(baseline_rev),
    }

    def deployer(arm: str) -> Callable[[], None]:
        def deploy() -> None:
            for g in guests:
                g.deploy_tarball(tarballs[arm])

        return deploy

    return {arm: deployer(arm) for arm in tarballs}


def _paired_night(
    plan: Plan,
    deploy: dict[str, Callable[[], None]],
    rounds_of: Rounds,
    progress: Progress,
    faults: list[str],
) -> tuple[dict, dict, Callable[[list[str], int], None]]:
    """The night's rounds with both arms alternately: the two result sets (metadata for the
    caller to add) and the rerun that continues both for `confirm`; a deployment that
    failed is added to `faults` and ends the rounds, what was measured is kept."""

    def run_round(names: list[str] | None, round_no: int, arm: str) -> list[dict]:
        of = plan.rounds if names is None else plan.rounds + plan.confirm_rounds
        return rounds_of(names, 1, round_no, lambda msg: progress(f"{arm}: {msg}"), of)

    arms = paired.run_paired(run_round, deploy, plan.rounds, progress=progress, faults=faults)

    def rerun(names: list[str], rounds: int) -> None:
        if not faults:
            paired.run_paired(
                run_round, deploy, rounds, names, plan.rounds + 1, progress, arms, faults
            )

    return {"results": arms[paired.CANDIDATE]}, {"results": arms[paired.BASELINE]}, rerun


def _baseline_failures(base: dict) -> list[str]:
    """A same-night baseline's failed runs, as faults: the candidate is not to blame for
    them (not a regression), and the night's comparison is incomplete without them."""
    lab, commit = base["metadata"]["lab"], str(base["metadata"].get("git_commit"))[:10]
    return [
        f"lab {lab}: baseline {commit}: {rec['experiment']} round {run.get('round')}: "
        f"{run['error']}"
        for rec in base["results"]
        for run in rec["runs"]
        if "error" in run
    ]


def _provisional(data: dict, base: dict | None, plan: Plan, progress: Progress) -> set[str]:
    """The gated metrics of this lab that look regressed against the baseline now: the
    same night's (`base`), or the baseline file's."""
    baseline = [base] if base is not None else plan.baseline
    if baseline is None:
        return set()
    try:
        comparisons, _ = compare_sets(
            baseline, [data], plan.floors, plan.allow_different, plan.paired
        )
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
    """Compare with the baseline (the same night's, if `run` measured one, else the
    baseline file's) and write every output into `plan.out`."""
    if outcome.baseline is None:
        outcome.baseline = plan.baseline
    if outcome.baseline is not None and outcome.candidate:
        try:
            comparisons, diffs = compare_sets(
                outcome.baseline,
                outcome.candidate,
                plan.floors,
                plan.allow_different,
                plan.paired,
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
            # What each metric not rerun could have shown had it been a suspect: its rounds
            # and a rerun's (those rerun already have theirs).
            tested = sum(1 for c in outcome.comparisons if c.gated and c.p_worse is not None)
            for c in outcome.comparisons:
                if c.gated and c.p_worse is not None and c.experiment not in confirmed:
                    c.detectable = detectable(c, tested, extra_rounds=plan.confirm_rounds)
    out = plan.out
    results = out / "results.json"
    saved = {"nightly": outcome.as_dict(), "labs": outcome.candidate}
    if outcome.baseline_rev is not None:  # measured tonight: its raw rounds are kept too
        saved["baseline_labs"] = outcome.baseline
    results.write_text(json.dumps(saved, indent=2) + "\n")
    suites = junit.tier_suites({t.name: out / t.report for t in outcome.tiers if t.report})
    failed_runs = outcome.experiment_errors()
    for data in outcome.candidate:
        lab = data["metadata"]["lab"]
        mine = [c for c in outcome.comparisons if c.experiment.startswith(f"{lab}/")]
        if not mine:  # no baseline: each metric still gets its case, with its figures
            mine = compare([], extract(data), plan.floors, data["metadata"]["accel"])
        errors = {k: v for k, v in failed_runs.items() if k.startswith(f"{lab}/")}
        suites.append(
            junit.benchmark_suite(
                lab, mine, errors, outcome.elapsed_s, outcome.baseline is not None
            )
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
        baseline=[] if plan.paired else None,
        baseline_rev=plan.baseline_rev,
    )
    for name in plan.tiers:
        outcome.tiers.append(run_tier(name, plan.out, progress))
    for cfg in plan.configs:
        lab = run_lab(cfg, plan, progress)
        outcome.faults += lab.faults
        if lab.data is not None:
            outcome.candidate.append(lab.data)
        if lab.baseline is not None and outcome.baseline is not None:
            outcome.baseline.append(lab.baseline)
            outcome.faults += _baseline_failures(lab.baseline)
    outcome.elapsed_s = time.monotonic() - start
    return finish(outcome, plan, progress)

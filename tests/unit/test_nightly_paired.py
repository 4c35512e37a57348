"""Same-night baselines (`invoke nightly --baseline-rev`): the arms' order, the rounds'
numbering, the paired test on seeded nights, and the revision's guest code taken from git."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml

from host.nightly.outcome import Outcome, compare_sets, load_same_night
from host.nightly.paired import (
    BASELINE,
    CANDIDATE,
    RevisionError,
    arm_order,
    resolve,
    revision_tarball,
    run_paired,
)
from host.nightly.run import Plan, _baseline_failures, finish
from host.nightly.stats import Floors, regressions
from host.paths import PROJECT_ROOT
from host.ssh import GuestLost
from tests.unit.nightly_data import record, result_set

#: Between nights the ratios to the kernel move up to ~50 % here (stop 21's A/A nights);
#: within a night, between two adjacent runs, far less.
FLOORS = Floors(
    {
        "tcg": {"throughput/kernel": 0.18, "p50 latency/kernel": 0.64},
        "tcg-paired": {"throughput/kernel": 0.03, "p50 latency/kernel": 0.03},
    },
    default=0.05,
)
MONO = "nightly/mono-stream · throughput/kernel"


def swings(seed: int, rounds: int, size: float = 0.2) -> list[float]:
    """The user-level paths' round-by-round swing of one night (±`size`)."""
    rng = random.Random(seed)
    return [1 + rng.uniform(-size, size) for _ in range(rounds)]


def test_the_arms_alternate_and_each_is_deployed_only_when_it_changes() -> None:
    deployed: list[str] = []
    ran: list[tuple[int, str, list[str] | None]] = []

    def run_round(names, round_no, arm):
        ran.append((round_no, arm, names))
        rec = record("x", "stream", "mono", "mbit_per_s", [float(round_no)])
        rec["runs"][0]["round"] = round_no  # as run_experiments numbers from first_round
        return [rec]

    deploy = {arm: (lambda arm=arm: deployed.append(arm)) for arm in (CANDIDATE, BASELINE)}
    arms = run_paired(run_round, deploy, 4, progress=lambda _m: None)
    assert [(r, a) for r, a, _ in ran] == [
        (1, CANDIDATE),
        (1, BASELINE),
        (2, BASELINE),
        (2, CANDIDATE),
        (3, CANDIDATE),
        (3, BASELINE),
        (4, BASELINE),
        (4, CANDIDATE),
    ]
    assert deployed == [CANDIDATE, BASELINE, CANDIDATE, BASELINE, CANDIDATE]
    for arm in (CANDIDATE, BASELINE):
        (rec,) = arms[arm]
        assert [run["round"] for run in rec["runs"]] == [1, 2, 3, 4]
    # a confirming rerun continues the numbering, with the names it is given, in place
    ran.clear()
    again = run_paired(run_round, deploy, 2, ["x"], 5, lambda _m: None, into=arms)
    assert again is arms and [(r, a, n) for r, a, n in ran][:2] == [
        (5, CANDIDATE, ["x"]),
        (5, BASELINE, ["x"]),
    ]
    assert [run["round"] for run in arms[BASELINE][0]["runs"]] == [1, 2, 3, 4, 5, 6]
    assert arm_order(6, first_round=5) == (BASELINE, CANDIDATE)


@pytest.mark.parametrize("trial_count", [60])
def test_pairing_sees_a_ten_percent_slowdown_that_the_night_to_night_swing_hides(
    trial_count: int,
) -> None:
    """Seeded nights in which the user-level paths swing ±20 % from round to round, the same
    for both arms of a night: the paired test raises no alarm in A/A nights and catches a
    10 % slowdown of mono in at least 9 of 10; the control, the very same candidate nights
    against a baseline from another night (unpaired, with the between-night floors that
    such a swing forces), catches almost none."""
    alarms = misses = unpaired_caught = 0
    for t in range(trial_count):
        night = swings(t, 5)
        base = result_set(seed=1000 + t, user_drift=night)
        same = result_set(seed=2000 + t, user_drift=night)
        slow = result_set(seed=3000 + t, mono_factor=0.9, user_drift=night)
        alarms += bool(regressions(compare_sets([base], [same], FLOORS, paired=True)[0]))
        caught = {c.name for c in regressions(compare_sets([base], [slow], FLOORS, paired=True)[0])}
        misses += MONO not in caught
        other_night = result_set(seed=4000 + t, user_drift=swings(10_000 + t, 5))
        control = compare_sets([other_night], [slow], FLOORS)[0]
        unpaired_caught += MONO in {c.name for c in regressions(control)}
    assert alarms == 0
    assert misses <= trial_count // 10
    assert unpaired_caught <= trial_count // 10


def test_a_paired_comparison_uses_the_rounds_both_arms_have() -> None:
    night = swings(7, 5)
    base = result_set(seed=1, user_drift=night)
    cand = result_set(seed=2, mono_factor=0.8, user_drift=night)
    base["results"][1]["runs"][2] = {"error": "boom", "error_kind": "experiment", "round": 3}
    comparisons = {c.name: c for c in compare_sets([base], [cand], FLOORS, paired=True)[0]}
    hit = comparisons[MONO]
    assert hit.method == "paired-t" and hit.floor == 0.03
    assert hit.verdict == "regressed" and hit.high < 0.97
    assert 0.7 < hit.ratio < 0.9 and hit.low < hit.ratio < hit.high
    # identical figures in every round: no spread to test, said as such, not a crash
    flat = compare_sets([base], [base], FLOORS, paired=True)[0]
    assert all(c.verdict in ("unchanged", "missing", "insufficient") for c in flat)


def test_a_same_night_baseline_is_reported_as_paired(tmp_path: Path) -> None:
    night = swings(3, 5)
    base = result_set(seed=1, commit="ba5e", user_drift=night)
    cand = result_set(seed=2, mono_factor=0.85, user_drift=night)
    cand["metadata"]["confirmed"] = ["mono-stream", "factored-stream"]
    plan = Plan(configs=[], out=tmp_path / "out", floors=FLOORS, baseline_rev="ba5e" * 10)
    plan.out.mkdir()
    outcome = Outcome("2026-12-07T02:30:00Z", [cand], baseline=[base], baseline_rev="ba5e" * 10)
    finish(outcome, plan, lambda _m: None)
    assert {c.method for c in outcome.comparisons if c.ratio is not None} == {"paired-t"}
    assert MONO in {c.name for c in outcome.regressions}
    failures = [
        r.message
        for suite in JUnitXml.fromfile(str(plan.out / "junit.xml"))
        for case in suite
        for r in case.result
        if isinstance(r, Failure)
    ]
    assert any(MONO in m and "paired (same night)" in m for m in failures)
    summary = (plan.out / "summary.md").read_text()
    assert "Baseline: commit `ba5eba5eba5e`, measured in this night" in summary
    assert "one-sided t-test of the rounds' log ratios" in (plan.out / "report.html").read_text()


def test_a_revision_is_resolved_and_its_guest_code_comes_from_git() -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert resolve("HEAD") == head
    with tarfile.open(fileobj=io.BytesIO(revision_tarball(head)), mode="r:gz") as tar:
        names = tar.getnames()
        assert all(n == "guest" or n.startswith("guest/") for n in names)
        member = tar.extractfile("guest/stack/tcp/connection.py")
        committed = subprocess.run(
            ["git", "show", f"{head}:guest/stack/tcp/connection.py"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            check=True,
        ).stdout
        assert member is not None and member.read() == committed
    with pytest.raises(RevisionError, match=r"--baseline-rev 'no-such-rev': not a commit"):
        resolve("no-such-rev")


def test_compare_takes_a_same_night_results_file_alone(tmp_path: Path) -> None:
    night = swings(5, 5)
    base = result_set(seed=1, commit="ba5e", user_drift=night)
    cand = result_set(seed=2, user_drift=night)
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"nightly": {}, "labs": [cand], "baseline_labs": [base]}))
    assert load_same_night(saved) == ([base], [cand])
    page = tmp_path / "page.html"
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"nightly": {}, "labs": [cand]}))
    with pytest.raises(
        ValueError, match=r"plain.json: not a nightly results.json with a same-night"
    ):
        load_same_night(plain)
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "compare", str(saved), "--calibrate", "--out", str(page)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "A/A, paired: 0 gated metric(s) flagged" in proc.stdout + proc.stderr
    assert "measured in this night" in proc.stdout
    assert "one-sided t-test of the rounds' log ratios" in page.read_text()


def test_a_baseline_run_that_failed_is_a_fault_not_the_candidates_regression() -> None:
    base = result_set(seed=1, commit="ba5e" * 10)
    base["results"][3]["runs"][1] = {"error": "rr: exit 1", "error_kind": "experiment", "round": 2}
    (fault,) = _baseline_failures(base)
    assert fault == "lab nightly: baseline ba5eba5eba: kernel-rr round 2: rr: exit 1"
    assert _baseline_failures(result_set(seed=1)) == []


def test_a_failed_deployment_ends_the_rounds_and_keeps_what_was_measured() -> None:
    """A guest lost between two arms: the deployment fails; the rounds end, the fault says
    where, and both arms' completed rounds are kept for the comparison."""
    faults: list[str] = []
    calls = {BASELINE: 0}

    def run_round(names, round_no, arm):
        rec = record("x", "stream", "mono", "mbit_per_s", [1.0])
        rec["runs"][0]["round"] = round_no
        return [rec]

    def baseline() -> None:
        calls[BASELINE] += 1
        if calls[BASELINE] == 2:  # the baseline's second deployment, in round 3
            raise GuestLost("guest b: SSH session lost (EOF)")

    deploy = {CANDIDATE: lambda: None, BASELINE: baseline}
    arms = run_paired(run_round, deploy, 5, progress=lambda _m: None, faults=faults)
    assert faults == [
        "round 3: deploying the baseline's guest code: guest b: SSH session lost (EOF)"
    ]
    assert [r["round"] for r in arms[CANDIDATE][0]["runs"]] == [1, 2, 3]
    assert [r["round"] for r in arms[BASELINE][0]["runs"]] == [1, 2]

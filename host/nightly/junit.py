"""The nightly's JUnit XML: the test tiers' own reports and one test case per experiment and
metric, in the subset of the format that GitHub, GitLab and Jenkins all read (testsuites >
testsuite > testcase with failure, error or skipped; times with at most 3 decimals).

A confirmed regression is a `failure` carrying the figure, the interval and the p-value; an
experiment that could not run, or a lab that never came up, is an `error` with what broke;
a metric that could not be tested (too few rounds, no baseline figure) is `skipped`, with why.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from host.nightly.stats import POWER, Comparison


def _time(seconds: float) -> float:
    return round(max(seconds, 0.0), 3)


def describe(c: Comparison) -> str:
    """One line with everything a reader needs to judge a comparison."""
    if c.ratio is None:
        return f"{c.name}: no figure on {'the baseline' if not c.base else 'the candidate'}"
    text = f"{c.name}: {c.ratio:.3f}x the baseline"
    if c.low is not None:
        text += f" (95% interval {c.low:.3f}-{c.high:.3f}"
        text += f", noise floor {c.floor:.0%}"
        if c.p_adjusted is not None:
            text += f", p={c.p_adjusted:.4f} adjusted"
        elif c.p_worse is not None:
            text += f", p={c.p_worse:.4f}"
        text += ")"
    text += f"; {c.better} is better; rounds {len(c.base)} vs {len(c.cand)}"
    if c.method == "paired-t":
        text += ", paired (same night)"
    if c.confirmed is not None:
        text += "; confirmed by a rerun" if c.confirmed else "; not confirmed by a rerun"
    return text


def detectable_text(c: Comparison) -> str:
    """A gated, tested metric's detectable change ("27%", or "none" when no change could
    pass with its rounds); "-" for the others."""
    if not c.gated or c.p_worse is None:
        return "-"
    return "none" if c.detectable is None else f"{c.detectable:.0%}"


def _figures(c: Comparison) -> str:
    text = (
        f"baseline rounds: {', '.join(f'{v:.4g}' for v in c.base) or '-'}\n"
        f"candidate rounds: {', '.join(f'{v:.4g}' for v in c.cand) or '-'}\n"
    )
    if (size := detectable_text(c)) != "-":
        text += f"smallest change for the worse this test could flag ({POWER:.0%} power): {size}\n"
    return text


def benchmark_suite(
    lab: str,
    comparisons: list[Comparison],
    errors: dict[str, list[dict]],
    seconds: float,
    baseline: bool,
) -> TestSuite:
    """The benchmarks as test cases: `errors` maps an experiment to its failed runs
    ({"error", "kind"}); `baseline` says whether there was anything to compare with."""
    suite = TestSuite(f"benchmarks.{lab}")
    suite.time = _time(seconds)
    for experiment, runs in errors.items():
        case = TestCase(f"{experiment} · runs", f"benchmarks.{lab}")
        first = runs[0]
        kind = first.get("kind", "infrastructure")
        message = f"{len(runs)} run(s) failed ({kind}): {first['error']}"
        case.result = [Error(message, kind) if kind == "infrastructure" else Failure(message, kind)]
        suite.add_testcase(case)
    for c in comparisons:
        case = TestCase(c.name, f"benchmarks.{lab}.{c.experiment}")
        case.system_out = _figures(c)
        if not baseline:
            pass  # figures recorded, nothing to compare with
        elif c.verdict in ("missing", "insufficient"):
            case.result = [Skipped(describe(c), c.verdict)]
        elif c.gated and c.verdict == "regressed" and c.confirmed is not False:
            case.result = [Failure(describe(c), "regression")]
        suite.add_testcase(case)
    return suite


def fault_suite(lab: str, faults: Iterable[str]) -> TestSuite:
    """Infrastructure faults that kept the benchmarks from running at all."""
    suite = TestSuite(f"infrastructure.{lab}")
    for i, fault in enumerate(faults, start=1):
        case = TestCase(f"fault {i}", f"infrastructure.{lab}")
        case.result = [Error(fault.splitlines()[0][:500], "infrastructure")]
        case.system_out = fault
        suite.add_testcase(case)
    return suite


def tier_suites(reports: dict[str, Path]) -> list[TestSuite]:
    """The test tiers' pytest reports, each suite renamed after its tier."""
    out = []
    for tier, path in reports.items():
        if not path.exists():
            continue
        xml = JUnitXml.fromfile(str(path))
        suites = [xml] if isinstance(xml, TestSuite) else list(xml)
        for suite in suites:
            suite.name = f"tests.{tier}"
            for case in suite:
                if case.time is not None:
                    case.time = _time(case.time)
            if suite.time is not None:
                suite.time = _time(suite.time)
            out.append(suite)
    return out


def write(path: Path, suites: list[TestSuite]) -> Path:
    """The suites under one <testsuites>, its totals counted here: junitparser's own count
    adds a `skipped` attribute to <testsuites> that the published schema does not allow."""
    xml = JUnitXml("stackbed nightly")
    for suite in suites:
        elapsed = suite.time
        suite.update_statistics()
        if elapsed:
            suite.time = _time(elapsed)
        xml.add_testsuite(suite)
    xml.tests = sum(s.tests for s in suites)
    xml.failures = sum(s.failures for s in suites)
    xml.errors = sum(s.errors for s in suites)
    xml.time = _time(sum(s.time or 0 for s in suites))
    path.parent.mkdir(parents=True, exist_ok=True)
    xml.write(str(path), pretty=True)
    return path

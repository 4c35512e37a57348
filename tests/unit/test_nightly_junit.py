"""The nightly's JUnit XML: a regression is a failure with its evidence, a broken testbed an
error, an untestable metric skipped; and the file validates against the published JUnit
schema (Jenkins' junit-10.xsd, as pytest's own tests use it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import xmlschema
from junitparser import Error, Failure, JUnitXml, Skipped

from host.nightly import junit
from host.nightly.outcome import compare_sets
from host.nightly.stats import Floors
from tests.unit.nightly_data import result_set

SCHEMA = Path(sys.prefix) / "share" / "stackbed" / "junit-10.xsd"
FLOORS = Floors({"tcg": {"throughput": 0.15, "p50 latency": 0.15}}, default=0.05)


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA} is missing: ./quickstart.sh setup fetches it (from PyPI)")
    return xmlschema.XMLSchema(str(SCHEMA))


def regressed_suite():
    base, cand = result_set(seed=5), result_set(seed=6, rounds=8, mono_factor=0.8)
    comparisons, _ = compare_sets([base], [cand], FLOORS)
    for c in comparisons:
        if c.verdict == "regressed":
            c.confirmed = True
    errors = {
        "nightly/factored-rr": [{"error": "guest b: SSH session lost", "kind": "infrastructure"}],
        "nightly/mono-rr": [{"error": "sha256 mismatch", "kind": "experiment"}],
    }
    return junit.benchmark_suite("nightly", comparisons, errors, 123.456789, baseline=True)


def results_of(suite) -> dict[str, list]:
    return {case.name: case.result for case in suite}


def test_a_confirmed_regression_is_a_failure_carrying_figure_interval_and_p() -> None:
    cases = results_of(regressed_suite())
    (failure,) = cases["nightly/mono-stream · throughput/kernel"]
    assert isinstance(failure, Failure) and failure.type == "regression"
    assert "x the baseline" in failure.message
    assert "95% interval" in failure.message and "p=" in failure.message
    assert "confirmed by a rerun" in failure.message
    assert cases["nightly/kernel-stream · throughput"] == []  # passed


def test_a_lost_guest_is_an_error_and_a_failed_experiment_a_failure() -> None:
    cases = results_of(regressed_suite())
    (lost,) = cases["nightly/factored-rr · runs"]
    assert isinstance(lost, Error) and "SSH session lost" in lost.message
    (broken,) = cases["nightly/mono-rr · runs"]
    assert isinstance(broken, Failure) and broken.type == "experiment"


def test_an_unconfirmed_regression_does_not_fail() -> None:
    base, cand = result_set(seed=5), result_set(seed=6, rounds=8, mono_factor=0.8)
    comparisons, _ = compare_sets([base], [cand], FLOORS)
    for c in comparisons:
        c.confirmed = False if c.verdict == "regressed" else None
    suite = junit.benchmark_suite("nightly", comparisons, {}, 1.0, baseline=True)
    assert not any(isinstance(r, Failure) for case in suite for r in case.result)


def test_untestable_metrics_are_skipped_with_why() -> None:
    base, cand = result_set(seed=5, rounds=2), result_set(seed=6)
    comparisons, _ = compare_sets([base], [cand], FLOORS)
    suite = junit.benchmark_suite("nightly", comparisons, {}, 1.0, baseline=True)
    (skip,) = results_of(suite)["nightly/kernel-stream · throughput"]
    assert isinstance(skip, Skipped) and skip.type == "insufficient"


def test_the_file_validates_against_the_published_schema(
    tmp_path: Path, schema: xmlschema.XMLSchema
) -> None:
    tier = tmp_path / "tests-unit.xml"
    tier.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" '
        'failures="1" skipped="0" tests="2" time="1.234567" timestamp="2026-12-06T02:30:00" '
        'hostname="h"><testcase classname="tests.unit.test_x" name="test_a" time="0.5000001"/>'
        '<testcase classname="tests.unit.test_x" name="test_b" time="0.1"><failure '
        'message="assert 1 == 2">trace</failure></testcase></testsuite></testsuites>'
    )
    suites = junit.tier_suites({"unit": tier})
    suites.append(regressed_suite())
    suites.append(junit.fault_suite("nightly", ["lab chain: guest m not reachable by SSH"]))
    out = junit.write(tmp_path / "junit.xml", suites)
    schema.validate(str(out))  # raises with the offending element if invalid
    xml = JUnitXml.fromfile(str(out))
    names = [suite.name for suite in xml]
    assert names == ["tests.unit", "benchmarks.nightly", "infrastructure.nightly"]
    assert xml.failures >= 3 and xml.errors == 2


def test_the_schema_check_can_fail(tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    """A time with six decimals (what an unrounded float writes) is refused by the schema,
    which is why every time is rounded to milliseconds."""
    bad = tmp_path / "bad.xml"
    bad.write_text(
        '<testsuites><testsuite name="s" tests="1" failures="0" errors="0" skipped="0" '
        'time="1.234567"><testcase name="c" classname="k" time="1.234567"/></testsuite>'
        "</testsuites>"
    )
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schema.validate(str(bad))

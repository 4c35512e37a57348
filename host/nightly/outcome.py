"""What a nightly run (or `invoke compare`) found: the result sets, the comparisons, the
test tiers and the faults, and the exit status they add up to.

One nightly covers one or more lab files; each gives a result set (a bench result file's
data: metadata, results). The nightly's own `results.json` holds them all under "labs" with
the outcome under "nightly", so a later night can use it as its baseline; a plain bench
result file is read as a single set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from host.nightly import fingerprint
from host.nightly.crosscheck import cross_check
from host.nightly.metrics import extract
from host.nightly.stats import Comparison, Floors, compare, regressions

#: Exit statuses, as CI reads them.
OK, REGRESSED, FAULT = 0, 1, 2


@dataclass
class Tier:
    """One test tier's pytest run."""

    name: str
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0
    returncode: int = 0
    report: str | None = None

    @property
    def broken(self) -> bool:
        return self.failures > 0 or self.errors > 0 or self.returncode not in (0, 5)


@dataclass
class Outcome:
    created: str
    candidate: list[dict]
    baseline: list[dict] | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    tiers: list[Tier] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    floors: str = "built-in default"
    confirm_rounds: int = 0
    baseline_rev: str | None = None  # the baseline was this commit, measured the same night

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in regressions(self.comparisons) if c.confirmed is not False]

    def experiment_errors(self) -> dict[str, list[dict]]:
        """Failed runs by experiment ("LAB/NAME"), each {"error", "kind"}."""
        out: dict[str, list[dict]] = {}
        for data in self.candidate:
            lab = data["metadata"]["lab"]
            for rec in data["results"]:
                for run in rec["runs"]:
                    if "error" in run:
                        entry = {"error": run["error"], "kind": run.get("error_kind", "experiment")}
                        out.setdefault(f"{lab}/{rec['experiment']}", []).append(entry)
        return out

    @property
    def infrastructure_faults(self) -> bool:
        errors = self.experiment_errors().values()
        return bool(self.faults) or any(e["kind"] == "infrastructure" for r in errors for e in r)

    @property
    def status(self) -> int:
        """2 on an infrastructure fault (the figures are incomplete: whatever else was found
        is reported, but the run cannot vouch for the rest), else 1 on a confirmed
        regression, a failed test or an experiment that failed by itself, else 0."""
        if self.infrastructure_faults:
            return FAULT
        if self.regressions or any(t.broken for t in self.tiers) or self.experiment_errors():
            return REGRESSED
        return OK

    @property
    def status_text(self) -> str:
        return {OK: "OK", REGRESSED: "REGRESSED", FAULT: "INFRASTRUCTURE FAULT"}[self.status]

    def as_dict(self) -> dict:
        return {
            "created": self.created,
            "status": self.status,
            "status_text": self.status_text,
            "elapsed_s": self.elapsed_s,
            "floors": self.floors,
            "confirm_rounds": self.confirm_rounds,
            "baseline_rev": self.baseline_rev,
            "method": "paired rounds, same night" if self.baseline_rev else "between nights",
            "differences": self.differences,
            "faults": self.faults,
            "tiers": [t.__dict__ for t in self.tiers],
            "comparisons": [c.as_dict() for c in self.comparisons],
            "cross_check": {d["metadata"]["lab"]: cross_check(d) for d in self.candidate},
        }


def _read(path: Path) -> object:
    """A result file's JSON; errors name the file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable result file: {err}") from err


def load_sets(path: Path) -> list[dict]:
    """The result sets in a file: a nightly's results.json (several labs) or a bench result
    file (one); errors name the file."""
    data = _read(path)
    if isinstance(data, dict) and isinstance(data.get("labs"), list):
        return data["labs"]
    if isinstance(data, dict) and "metadata" in data and "results" in data:
        return [data]
    raise ValueError(f"{path}: neither a bench result file nor a nightly results.json")


def load_same_night(path: Path) -> tuple[list[dict], list[dict]]:
    """The baseline and candidate sets of a nightly run made with a same-night baseline
    (`--baseline-rev`), from its results.json; errors name the file."""
    data = _read(path)
    if not isinstance(data, dict) or not isinstance(data.get("baseline_labs"), list):
        raise ValueError(f"{path}: not a nightly results.json with a same-night baseline")
    return data["baseline_labs"], data["labs"]


def compare_sets(
    base: list[dict],
    cand: list[dict],
    floors: Floors,
    allow_different: bool = False,
    paired: bool = False,
) -> tuple[list[Comparison], list[str]]:
    """Every metric of the candidate's sets against the baseline's, lab by lab, tested
    together (one correction for all of them); the fingerprints must agree (else
    `fingerprint.Incomparable`, unless allowed). `paired`: the baseline was measured in the
    same night, round by round, and rounds of one number are compared as pairs."""
    by_lab = {d["metadata"]["lab"]: d for d in base}
    differences: list[str] = []
    base_metrics, cand_metrics = [], []
    for data in cand:
        lab = data["metadata"]["lab"]
        cand_metrics += extract(data)
        theirs = by_lab.get(lab)
        if theirs is None:
            continue
        for diff in fingerprint.check(theirs["metadata"], data["metadata"], allow_different):
            differences.append(f"{lab}: {diff}")
        base_metrics += extract(theirs)
    accel = cand[0]["metadata"]["accel"] if cand else "tcg"
    return compare(base_metrics, cand_metrics, floors, accel, paired=paired), differences

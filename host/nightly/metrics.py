"""The figures a nightly run gates on, taken from a result file, one sample per round.

Each experiment type names its gated figures (`ExperimentType.gates`). A user-level path is
gated on its ratio to the kernel path measured in the same round rather than on its raw
figure: the host's drift from night to night (another tenant, thermal state, TCG's swings)
moves both alike, so the ratio cancels most of it. The raw figures are kept beside, shown
but not gated. Rounds are the unit of a sample because `--rounds` interleaves experiments,
which is what makes a same-round ratio meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from host.experiments import EXPERIMENT_TYPES
from host.report import per_round

KERNEL = "kernel"


@dataclass(frozen=True)
class Metric:
    """One figure of one experiment: its value in each round that succeeded."""

    experiment: str  # "LAB/EXPERIMENT": two lab files may each have a "kernel-stream"
    figure: str  # "throughput", or "throughput/kernel" for a ratio to the kernel path
    better: Literal["higher", "lower"]
    gated: bool
    samples: dict[int, float]

    @property
    def name(self) -> str:
        return f"{self.experiment} · {self.figure}"

    @property
    def values(self) -> list[float]:
        return [self.samples[r] for r in sorted(self.samples)]


def kernel_reference(record: dict, by_name: dict[str, dict]) -> dict | None:
    """The kernel-path experiment a user-level one is measured against: the first kernel
    path along its chain of `baseline:`s (factored -> mono -> kernel), of the same type."""
    seen = {record["experiment"]}
    current = record
    while (name := current.get("baseline")) and name not in seen:
        seen.add(name)
        current = by_name.get(name)
        if current is None or current["type"] != record["type"]:
            return None
        if current["path"] == KERNEL:
            return current
    return None


def extract(data: dict) -> list[Metric]:
    """Every gated figure of a result file, and the raw figures shown beside the ratios."""
    by_name = {rec["experiment"]: rec for rec in data["results"]}
    lab = data["metadata"]["lab"]
    out: list[Metric] = []
    for rec in data["results"]:
        kind = EXPERIMENT_TYPES.get(rec["type"])
        if kind is None:
            continue
        name = f"{lab}/{rec['experiment']}"
        reference = kernel_reference(rec, by_name) if rec["path"] != KERNEL else None
        for gate in kind.gates:
            raw = per_round(rec, gate.key)
            if reference is None:
                out.append(Metric(name, gate.figure, gate.better, gate.gated, raw))
                continue
            base = per_round(reference, gate.key)
            ratio = {r: v / base[r] for r, v in raw.items() if base.get(r)}
            figure = f"{gate.figure}/{KERNEL}"
            out.append(Metric(name, figure, gate.better, gate.gated, ratio))
            out.append(Metric(name, gate.figure, gate.better, False, raw))
    return out

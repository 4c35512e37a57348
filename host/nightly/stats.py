"""Deciding "regressed": a rank test, a bootstrap interval, a noise floor, many metrics at once.

A metric regressed only when three things hold together:
- Mann-Whitney U (one-sided, exact for small samples) says the candidate's rounds are worse
  than the baseline's, with its p-value adjusted for the number of gated metrics tested
  together (Benjamini-Hochberg, `scipy.stats.false_discovery_control`);
- the bootstrap interval of the ratio of medians (candidate / baseline) lies wholly beyond
  the metric's noise floor on the worse side: a difference that is real but smaller than
  what A/A runs of one commit show between nights is not reported;
- (done by the caller) a confirming rerun keeps it so.
The rank test guards against chance within a night, the floor against the drift between
nights that no within-night test can see. Both come from maintained code (scipy); only the
wiring is ours.

When the baseline was measured in the same night, round by round beside the candidate
(`invoke nightly --baseline-rev`), the rounds are pairs: each round's ratio candidate /
baseline has the night's drift cancelled, and the test is a one-sided t-test of the rounds'
log ratios (as pyperf compares), with the ratio their geometric mean and the interval the
t-interval of it. A rank test of pairs (Wilcoxon) cannot go below p = 1/32 with 5 rounds, so
no single metric could survive the correction; the floor is then the same-night floor
(`ACCEL-paired` in the floors file): the smallest change worth reporting, since the
t-interval already carries the noise left between two adjacent runs.

"Unchanged" is not "no regression": with a night's spread and rounds only changes above some
size can be flagged. Each tested gated comparison says which (`detectable`): the smallest
change for the worse that the screen and then the corrected test would flag with 80 % power,
given its standard error and floor, so that a reader knows what a night could and could not
have seen.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from scipy.special import comb
from scipy.stats import bootstrap, false_discovery_control, mannwhitneyu, norm, t, ttest_1samp

from host.nightly.metrics import Metric

Verdict = Literal["regressed", "improved", "unchanged", "insufficient", "missing"]
Method = Literal["mann-whitney", "paired-t"]

ALPHA = 0.05
CONFIDENCE = 0.95
POWER = 0.8
MIN_ROUNDS = 3
RESAMPLES = 4000
DEFAULT_FLOOR = 0.05


def paired_key(accel: str) -> str:
    """The floors file's section for same-night comparisons under `accel`."""
    return f"{accel}-paired"


@dataclass(frozen=True)
class Floors:
    """The noise floor of each figure (a fraction of the baseline), per accelerator: from A/A
    runs (`invoke compare --calibrate`), with a default for figures not calibrated."""

    by_accel: dict[str, dict[str, float]] = field(default_factory=dict)
    default: float = DEFAULT_FLOOR
    source: str = "built-in default"

    def floor(self, accel: str, figure: str, paired: bool = False) -> float:
        """The floor of `figure` under `accel`; `paired`: for a baseline measured in the same
        night, round by round (the file's `ACCEL-paired` section)."""
        return self.by_accel.get(paired_key(accel) if paired else accel, {}).get(
            figure, self.default
        )

    @classmethod
    def load(cls, path: Path) -> Floors:
        """Read a floors file: `default: F` and `ACCEL: {FIGURE: F, ...}`; errors name the
        file and the field."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read noise floors: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of accelerators to floors")
        default = data.pop("default", DEFAULT_FLOOR)
        by_accel: dict[str, dict[str, float]] = {}
        for accel, figures in data.items():
            if not isinstance(figures, dict):
                raise ValueError(f"{path}: {accel}: expected a mapping of figures to floors")
            for figure, value in figures.items():
                if not isinstance(value, int | float) or not 0 <= value < 1:
                    raise ValueError(
                        f"{path}: {accel}.{figure}: a floor is a fraction in [0, 1), not {value!r}"
                    )
            by_accel[str(accel)] = {str(k): float(v) for k, v in figures.items()}
        if not isinstance(default, int | float) or not 0 <= default < 1:
            raise ValueError(f"{path}: default: a floor is a fraction in [0, 1)")
        return cls(by_accel, float(default), str(path))


@dataclass
class Comparison:
    """One metric of a candidate against the same metric of a baseline."""

    experiment: str
    figure: str
    better: Literal["higher", "lower"]
    gated: bool
    base: list[float]
    cand: list[float]
    floor: float
    ratio: float | None = None
    low: float | None = None  # interval: bootstrap of the ratio of medians, or paired t
    high: float | None = None
    p_worse: float | None = None  # one-sided (Mann-Whitney U, or paired t), candidate worse
    p_better: float | None = None
    p_adjusted: float | None = None  # p_worse (or p_better) after Benjamini-Hochberg
    verdict: Verdict = "insufficient"
    confirmed: bool | None = None  # set by a confirming rerun
    method: Method = "mann-whitney"
    #: Standard error of the log ratio (paired: of the rounds' mean; else from the bootstrap
    #: interval's width), and its degrees of freedom (None: normal quantiles).
    se_log: float | None = None
    dof: int | None = None
    #: The smallest change for the worse this test would flag with POWER (0.27: 27 %), set by
    #: `decide` for the gated metrics; None where it cannot flag any with these rounds.
    detectable: float | None = None

    @property
    def name(self) -> str:
        return f"{self.experiment} · {self.figure}"

    def beyond_floor(self, side: Literal["worse", "better"]) -> bool:
        """Whether the whole interval lies beyond the floor on `side`."""
        if self.low is None or self.high is None:
            return False
        worse_is_low = self.better == "higher"
        if (side == "worse") == worse_is_low:
            return self.high < 1 - self.floor
        return self.low > 1 + self.floor

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"name": self.name}


def _ratio_of_medians(base, cand, axis=-1):
    return np.median(cand, axis=axis) / np.median(base, axis=axis)


def interval(base: list[float], cand: list[float], seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(cand) / median(base), seeded so that a
    comparison printed twice reads the same."""
    if len(set(base)) == 1 and len(set(cand)) == 1:
        value = cand[0] / base[0]
        return value, value
    res = bootstrap(
        (np.asarray(base), np.asarray(cand)),
        _ratio_of_medians,
        vectorized=True,
        paired=False,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _p_values(base: list[float], cand: list[float], better: str) -> tuple[float, float]:
    """One-sided p-values that the candidate is worse, and that it is better."""
    lower, higher = (
        float(mannwhitneyu(cand, base, alternative=alt, method="auto").pvalue)
        for alt in ("less", "greater")
    )
    return (lower, higher) if better == "higher" else (higher, lower)


def _paired(out: Comparison, base: Metric, cand: Metric) -> None:
    """Fill `out` from the rounds both sides have: the geometric mean of the per-round
    ratios, its t-interval, one-sided t-tests of the log ratios."""
    rounds = sorted(r for r in set(base.samples) & set(cand.samples) if base.samples[r] > 0)
    logs = np.log([cand.samples[r] / base.samples[r] for r in rounds if cand.samples[r] > 0])
    if len(logs) == 0:
        out.verdict = "missing"
        return
    out.ratio = float(np.exp(logs.mean()))
    if len(logs) < MIN_ROUNDS:
        return
    if np.ptp(logs) == 0:  # identical ratios in every round: no spread to test against
        out.low = out.high = out.ratio
        lower, higher = (1.0, 0.0) if logs[0] > 0 else (0.0, 1.0) if logs[0] < 0 else (1.0, 1.0)
    else:
        ci = ttest_1samp(logs, 0.0).confidence_interval(CONFIDENCE)
        out.low, out.high = float(np.exp(ci.low)), float(np.exp(ci.high))
        out.se_log, out.dof = float(logs.std(ddof=1) / np.sqrt(len(logs))), len(logs) - 1
        lower, higher = (
            float(ttest_1samp(logs, 0.0, alternative=alt).pvalue) for alt in ("less", "greater")
        )
    out.p_worse, out.p_better = (lower, higher) if out.better == "higher" else (higher, lower)


def compare_one(
    base: Metric | None,
    cand: Metric | None,
    floor: float,
    seed: int = 0,
    paired: bool = False,
) -> Comparison:
    ref = cand or base
    assert ref is not None
    out = Comparison(
        ref.experiment,
        ref.figure,
        ref.better,
        ref.gated,
        base.values if base else [],
        cand.values if cand else [],
        floor,
    )
    if base is None or cand is None or not out.base or not out.cand:
        out.verdict = "missing"
        return out
    if paired:
        out.method = "paired-t"
        _paired(out, base, cand)
        return out
    out.ratio = statistics.median(out.cand) / statistics.median(out.base)
    if len(out.base) < MIN_ROUNDS or len(out.cand) < MIN_ROUNDS:
        return out
    out.low, out.high = interval(out.base, out.cand, seed)
    if out.low > 0 and out.high > out.low:
        out.se_log = float(np.log(out.high / out.low) / (2 * norm.ppf((1 + CONFIDENCE) / 2)))
    out.p_worse, out.p_better = _p_values(out.base, out.cand, ref.better)
    return out


def detectable(
    c: Comparison, tested: int, alpha: float = ALPHA, extra_rounds: int = 0
) -> float | None:
    """The smallest change for the worse that `c`'s test would flag with POWER, one of
    `tested` gated metrics; None if no change could pass with these rounds.

    A change is flagged in two steps: the screen (`screen`: p below alpha, uncorrected, and
    the interval beyond the floor) picks it with the rounds measured, then the corrected test
    (alpha / tested: a lone change among the gated metrics, Benjamini-Hochberg's strictest)
    must pass after the confirming rerun's `extra_rounds` joined (both arms when paired, the
    candidate's alone night to night). Each step needs the estimate past its threshold; the
    change must clear the higher one with POWER to spare."""
    if c.se_log is None or c.se_log <= 0 or tested < 1:
        return None
    if c.method == "paired-t" and c.dof is not None:
        pairs = c.dof + 1
        later = pairs + extra_rounds
        se_later = c.se_log * np.sqrt(pairs / later)
        quantile_now, quantile_later = partial(t.ppf, df=c.dof), partial(t.ppf, df=later - 1)
    else:
        n_base, n_cand = len(c.base), len(c.cand)
        later = n_cand + extra_rounds
        se_later = c.se_log * np.sqrt((1 / n_base + 1 / later) / (1 / n_base + 1 / n_cand))
        quantile_now = quantile_later = norm.ppf
        # The exact rank test's smallest one-sided p: every candidate round beyond every
        # baseline round.
        if 1 / comb(n_base + n_cand, n_cand) >= alpha:
            return None
        if 1 / comb(n_base + later, later) >= alpha / tested:
            return None
    floor_log = -np.log(1 - c.floor) if c.better == "higher" else np.log(1 + c.floor)

    def threshold(se: float, level: float, quantile: Callable[[float], float]) -> float:
        return max(floor_log + quantile((1 + CONFIDENCE) / 2) * se, quantile(1 - level) * se)

    needed = max(
        threshold(c.se_log, alpha, quantile_now),
        threshold(se_later, alpha / tested, quantile_later),
    )
    shift = needed + quantile_now(POWER) * c.se_log
    return float(1 - np.exp(-shift) if c.better == "higher" else np.exp(shift) - 1)


def compare(
    base: list[Metric],
    cand: list[Metric],
    floors: Floors,
    accel: str,
    alpha: float = ALPHA,
    paired: bool = False,
) -> list[Comparison]:
    """Every metric of either side, matched by experiment and figure, with a verdict;
    `paired`: the two sides were measured round by round in one night."""
    by_key = {(m.experiment, m.figure): m for m in base}
    mine = {(m.experiment, m.figure): m for m in cand}
    keys = [*mine, *(k for k in by_key if k not in mine)]
    out = [
        compare_one(
            by_key.get(k), mine.get(k), floors.floor(accel, k[1], paired), seed=i, paired=paired
        )
        for i, k in enumerate(keys)
    ]
    decide(out, alpha)
    return out


def decide(comparisons: list[Comparison], alpha: float = ALPHA) -> None:
    """Set each tested comparison's verdict. The gated ones' p-values are adjusted together
    (Benjamini-Hochberg); a figure shown but not gated keeps its own p-value, and its verdict
    only says which way it moved. The gated ones' detectable change counts no rerun (the
    nightly, which knows its rerun, sets it again)."""
    tested = [c for c in comparisons if c.p_worse is not None]
    gated = [c for c in tested if c.gated]
    shown = [c for c in tested if not c.gated]
    worse = false_discovery_control([c.p_worse for c in gated], method="bh") if gated else []
    better = false_discovery_control([c.p_better for c in gated], method="bh") if gated else []
    pairs = [(c, float(w), float(b)) for c, w, b in zip(gated, worse, better, strict=True)]
    for c in gated:
        c.detectable = detectable(c, len(gated), alpha)
    pairs += [(c, c.p_worse, c.p_better) for c in shown]
    for c, p_worse, p_better in pairs:
        if p_worse < alpha and c.beyond_floor("worse"):
            c.verdict, c.p_adjusted = "regressed", p_worse
        elif p_better < alpha and c.beyond_floor("better"):
            c.verdict, c.p_adjusted = "improved", p_better
        else:
            c.verdict, c.p_adjusted = "unchanged", p_worse
        if not c.gated:
            c.p_adjusted = None


def screen(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """The gated metrics worth a confirming rerun: worse at `alpha` before any correction,
    the interval beyond the floor. A lone change in a night's rounds alone cannot pass the
    corrected test with the nightly suite's 15 gated metrics (5 against 5, the smallest
    one-sided p is 0.004, times 15); the rerun's rounds join them and the corrected test
    decides. (A paired t-test has no such lower bound, but a rerun still confirms.)"""
    return [
        c
        for c in comparisons
        if c.gated and c.p_worse is not None and c.p_worse < alpha and c.beyond_floor("worse")
    ]


def regressions(comparisons: list[Comparison]) -> list[Comparison]:
    return [c for c in comparisons if c.gated and c.verdict == "regressed"]


def calibrate(runs: list[list[Comparison]], margin: float = 1.25) -> dict[str, float]:
    """Noise floors from A/A comparisons (one commit against itself): for each figure, the
    largest distance of a median ratio from 1 seen over the runs, times `margin`, rounded up
    to the next percent. A floor only ever errs high: a real change smaller than the A/A
    spread cannot be told from the drift between nights."""
    worst: dict[str, float] = {}
    for comparisons in runs:
        for c in comparisons:
            if c.ratio is not None and c.gated:
                worst[c.figure] = max(worst.get(c.figure, 0.0), abs(c.ratio - 1))
    return {fig: float(np.ceil(w * margin * 100) / 100) for fig, w in sorted(worst.items())}

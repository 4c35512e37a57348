"""The nightly runs' history: a plain CSV store, one row per night × experiment × metric, and
change points found in each metric's nightly medians (ruptures), plotted night by night.

The store is a CSV file rather than JSON or a database so that it reads without stackbed (a
spreadsheet, pandas, awk) and grows by appending, one night at a time, with no rewriting.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class HistoryRow:
    """One metric of one experiment on one night, summarised over that night's rounds."""

    created: str  # ISO 8601 UTC of the night's run, e.g. 2026-12-06T02:30:00Z
    commit: str  # git commit (full sha or "unknown")
    fingerprint: str  # short hash of what makes figures comparable (accelerator, QEMU, CPU...)
    accel: str  # "kvm" or "tcg"
    experiment: str  # e.g. "mono-stream"
    metric: str  # e.g. "throughput" or "throughput/kernel" (a ratio to the kernel path)
    better: str  # "higher" or "lower"
    median: float
    low: float  # lowest round of that night
    high: float  # highest round
    rounds: int


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HistoryRow))
_FLOATS = ("median", "low", "high")
_BETTER = ("higher", "lower")


def _when(created: str) -> datetime:
    """`created` as an aware datetime, to order nights by time rather than by spelling (an
    offset of +00:00, or fractional seconds, would sort wrongly as text). Naive means UTC."""
    when = datetime.fromisoformat(created)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _check(row: HistoryRow) -> None:
    """Refuse what would make the store unreadable later: better in the file than at load."""
    _when(row.created)
    if row.better not in _BETTER:
        raise ValueError(f"better must be one of {_BETTER}, not {row.better!r}")
    if not isinstance(row.rounds, int) or isinstance(row.rounds, bool):
        raise ValueError(f"rounds must be an int, not {row.rounds!r}")
    for name in _FLOATS:
        float(getattr(row, name))


def _cell(row: HistoryRow, name: str) -> str:
    value = getattr(row, name)
    # repr keeps every digit (and round-trips exactly); str would too today, repr says so.
    return repr(float(value)) if name in _FLOATS else str(value)


def _header_error(store: Path, found: Sequence[str]) -> ValueError:
    return ValueError(
        f"{store}: columns {','.join(found) or '(none)'} differ from the expected "
        f"{','.join(FIELDS)}; not mixing rows into a file of another layout"
    )


def append(store: Path, rows: Iterable[HistoryRow]) -> Path:
    """Append `rows` to the CSV `store`, creating it (and its folders) with a header line.

    A file whose header differs is refused rather than extended: rows under the wrong columns
    would be misread by every later reader, stackbed or not.
    """
    store = Path(store)
    rows = list(rows)
    for row in rows:
        _check(row)
    fresh = not store.exists() or store.stat().st_size == 0
    if not fresh:
        with store.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != FIELDS:
            raise _header_error(store, header)
        with store.open("rb") as f:  # a run cut short may have left a line unfinished
            f.seek(-1, 2)
            unfinished = f.read(1) not in (b"\n", b"\r")
    store.parent.mkdir(parents=True, exist_ok=True)
    with store.open("a", newline="") as f:
        if not fresh and unfinished:
            f.write("\n")  # keep the new rows whole; load names the broken line
        writer = csv.writer(f, lineterminator="\n")
        if fresh:
            writer.writerow(FIELDS)
        for row in rows:
            writer.writerow([_cell(row, name) for name in FIELDS])
    return store


def _parse(cells: list[str]) -> HistoryRow:
    if len(cells) != len(FIELDS):
        raise ValueError(f"{len(cells)} columns instead of {len(FIELDS)}")
    values: dict[str, object] = dict(zip(FIELDS, cells, strict=True))
    for name in _FLOATS:
        values[name] = float(cells[FIELDS.index(name)])
    values["rounds"] = int(cells[FIELDS.index("rounds")])
    row = HistoryRow(**values)  # type: ignore[arg-type]
    _check(row)
    return row


def load(store: Path) -> list[HistoryRow]:
    """Every row of the CSV `store`, in file order. Errors name the file and the line (as a
    text editor counts them) of the first bad row, so that it can be mended by hand."""
    store = Path(store)
    with store.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if tuple(header) != FIELDS:
            raise _header_error(store, header)
        rows = []
        for cells in reader:
            if not cells:
                continue  # a blank line (say, left by an editor) holds no night
            try:
                rows.append(_parse(cells))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{store}, line {reader.line_num}: {err}") from None
    return rows


def newest_fingerprint(rows: Iterable[HistoryRow]) -> str | None:
    """The fingerprint of the newest night: figures are compared only within one fingerprint,
    and the one that matters is the current set-up's. None when there are no rows."""
    newest = max(rows, key=lambda row: _when(row.created), default=None)
    return None if newest is None else newest.fingerprint


def series(
    rows: Iterable[HistoryRow], fingerprint: str | None = None
) -> dict[tuple[str, str], list[HistoryRow]]:
    """Rows by (experiment, metric), each list in created order (ties keep file order).

    Only rows of `fingerprint` when given: figures of different fingerprints are not
    comparable. None keeps every row; `flag` and `plot_history` take `newest_fingerprint`.
    """
    out: dict[tuple[str, str], list[HistoryRow]] = {}
    for row in rows:
        if fingerprint is None or row.fingerprint == fingerprint:
            out.setdefault((row.experiment, row.metric), []).append(row)
    return {key: sorted(out[key], key=lambda row: _when(row.created)) for key in sorted(out)}


# --- change points -------------------------------------------------------------------------

TRIM = 0.1
"""Fraction of the largest successive differences left out of the noise scale (at least one):
the jumps at a change point (or round a bad night) are not noise."""

PENALTY_PER_LOG_N = 5.0
"""The default penalty is this × log(n): 2.5 times BIC's 2·log(n) for the l2 cost of values of
unit noise (each change adds a location and a mean). Measured with this module on seeded
Gaussian series of 3 % noise, 4000 flat series of 20 nights: false alarms per series were
0.19 with plain BIC (2·log n), 0.060 with 3·log n, 0.027 with 4·log n, 0.012 with 5·log n
(1.0 % of series had any) and 0.005 with 6·log n. At 5·log n a 10 % step was placed within
one night of the truth in 96 % of 2000 series when mid-way, 92 % when 5 nights from the
end and 78 % when 3 from the end (min_size: no fewer can be). Over 60 nights: 0.05 % false
alarms, 98 % found mid-way. 12 nights are harder (the scale itself is uncertain): 3.7 %
false alarms, 84 % found. Waiting a night or two longer for a change costs less than
false alarms do."""


def noise_scale(values: Sequence[float]) -> float:
    """The night-to-night noise of `values`, as a standard deviation, from their successive
    differences: a difference of two nights with noise σ has spread σ·√2, whatever the level,
    so a step or a slow drift barely moves this scale where the plain deviation would grow.

    Robust and efficient at once: the root mean square of the differences (centred on their
    median) with the largest `TRIM` of them left out, corrected for that trimming as if they
    were Gaussian. The median absolute deviation of the same differences is more robust still
    but wastes most of 20 nights (efficiency ~37 %): its scale wandered by ±29 % (sd) over 20
    nights against ±22 % here, and an underestimated scale is what makes false alarms — at the
    same penalty it flagged about 3 times as many flat series. Leaving out `TRIM` tolerates one
    step or one odd night in 10-20 nights; more than that inflates the scale (fewer alarms,
    never more). 0.0 when the values do not vary at all.
    """
    diffs = np.diff(np.asarray(values, dtype=float))
    if diffs.size == 0:
        return 0.0
    dev = np.sort(np.abs(diffs - np.median(diffs)))
    m = dev.size
    cut = min(math.ceil(TRIM * m), max(m - 2, 0))
    kept = dev[: m - cut]
    share = kept.size / m
    if cut and kept.any():
        # E[d² | |d| < c] / σ² for a normal d, c cutting off the same share: 1 - 2cφ(c)/share.
        normal = statistics.NormalDist()
        c = normal.inv_cdf(0.5 + share / 2)
        factor = 1 - 2 * c * normal.pdf(c) / share
        rms = math.sqrt(float(np.mean(kept**2)) / factor)
    else:  # nothing left once trimmed (mostly equal values, say quantised): take them all
        rms = math.sqrt(float(np.mean(dev**2)))
    return rms / math.sqrt(2)


def change_points(
    values: Sequence[float], min_size: int = 3, penalty: float | None = None
) -> list[int]:
    """Indexes where a new segment of `values` starts (never 0 nor len(values)).

    Found with ruptures' Pelt (exact for a penalised cost, and fast) and the "l2" cost: a
    change in the nightly median's level is what matters, and after dividing by the noise
    scale the l2 cost is the Gaussian likelihood, so the penalty has a meaning (BIC-like) and
    one value suits every metric. "rbf" would also catch changes of spread, but its kernel
    bandwidth is one more thing to tune, and a few nights hold no reliable spread anyway.

    The values are first divided by `noise_scale` so that each metric's own night-to-night
    noise sets the scale. `penalty` defaults to `PENALTY_PER_LOG_N` × log(n) (see there for
    the false-alarm rate and detection measured). Segments are at least `min_size` nights, so
    that one odd night is not a change; fewer than 2 × min_size values give [].
    """
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, not {min_size}")
    x = np.asarray(values, dtype=float)
    n = x.size
    if n < 2 * min_size:
        return []
    if not np.all(np.isfinite(x)):
        raise ValueError("change_points needs finite values (a NaN or infinity is no figure)")
    scale = noise_scale(x)
    if scale == 0.0:
        return []  # every night equal: nothing changed
    import ruptures

    z = ((x - np.median(x)) / scale).reshape(-1, 1)
    pen = PENALTY_PER_LOG_N * math.log(n) if penalty is None else penalty
    # jump=1: every night may start a segment (ruptures' default only tries every 5th).
    ends = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(z).predict(pen=pen)
    return [int(end) for end in ends if 0 < end < n]


@dataclass
class Flagged:
    """A change point: the first night of the new segment, and the median of the nightly
    medians in the segment before it and in the one it starts (up to the next change)."""

    experiment: str
    metric: str
    at: HistoryRow
    before: float
    after: float

    @property
    def relative(self) -> float | None:
        """after / before - 1 (None when before is 0)."""
        return None if self.before == 0 else self.after / self.before - 1

    @property
    def worse(self) -> bool:
        """Whether the new level is worse, by the metric's `better`."""
        return self.after < self.before if self.at.better == "higher" else self.after > self.before


def _finite(rows: list[HistoryRow]) -> list[HistoryRow]:
    return [row for row in rows if math.isfinite(row.median)]


def _segments(rows: list[HistoryRow]) -> tuple[list[int], list[float]]:
    """The change points of a series' medians and each segment's median."""
    medians = [row.median for row in rows]
    points = change_points(medians)
    bounds = [0, *points, len(medians)]
    levels = [statistics.median(medians[a:b]) for a, b in itertools.pairwise(bounds)]
    return points, levels


def flag(rows: Iterable[HistoryRow], fingerprint: str | None = None) -> list[Flagged]:
    """Every change point of every (experiment, metric) series, by series then night.

    Only one fingerprint's rows: `fingerprint`, by default the newest night's. Nights whose
    median is not finite are left out (they hold no figure).
    """
    rows = list(rows)
    fingerprint = fingerprint if fingerprint is not None else newest_fingerprint(rows)
    out = []
    for (experiment, metric), nights in series(rows, fingerprint).items():
        nights = _finite(nights)
        points, levels = _segments(nights)
        for i, point in enumerate(points):
            out.append(Flagged(experiment, metric, nights[point], levels[i], levels[i + 1]))
    return out


# --- plots ---------------------------------------------------------------------------------


def _file_name(experiment: str, metric: str, taken: set[str]) -> str:
    """A file name safe anywhere: "/" (and anything else odd) becomes "_"; never reused."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{experiment}.{metric}").strip("._") or "series"
    name, k = f"{stem}.svg", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.svg"
    taken.add(name)
    return name


def _plot(nights: list[HistoryRow], points: list[int], levels: list[float], title: str, out):
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure of its own (no pyplot): no global state, no window, safe to call repeatedly.
    fig = Figure(figsize=(max(6.0, min(16.0, 0.35 * len(nights) + 3)), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(nights)))
    med = [row.median for row in nights]
    below = [max(row.median - row.low, 0.0) for row in nights]
    above = [max(row.high - row.median, 0.0) for row in nights]
    ax.errorbar(x, med, yerr=[below, above], fmt="o", ms=4, capsize=3, color="#1565c0")
    bounds = [0, *points, len(nights)]
    for (a, b), level in zip(itertools.pairwise(bounds), levels, strict=True):
        ax.hlines(level, a - 0.4, b - 0.6, colors="#9e9e9e", linewidth=1)  # segment medians
    for point in points:
        ax.axvline(point - 0.5, color="#c62828", linestyle="--", linewidth=1.2)
    step = max(1, math.ceil(len(nights) / 40))  # a readable number of labels
    ax.set_xticks(x[::step], [row.commit[:7] for row in nights][::step], rotation=60)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("night (commit)")
    ax.set_ylabel("median of the rounds (bars: lowest – highest)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    # Text kept as text (searchable, smaller); no date and fixed ids: same input, same file.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "stackbed-history"}):
        fig.savefig(out, format="svg", metadata={"Date": None})


def _number(value: float) -> str:
    return f"{value:.4g}"


def plot_history(
    rows: Iterable[HistoryRow], out_dir: Path, fingerprint: str | None = None
) -> list[Path]:
    """One SVG per (experiment, metric) in `out_dir`, and `out_dir/index.md` listing them and
    the flagged change points as a table. Only one fingerprint's rows: `fingerprint`, by
    default the newest night's. Returns the paths written (the index last).

    x: the nights in order, labelled by short commit; y: the night's median with bars from
    its lowest to its highest round; dashed lines where a new segment starts (`flag`), grey
    lines at each segment's median.
    """
    rows = list(rows)
    fingerprint = fingerprint if fingerprint is not None else newest_fingerprint(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    taken: set[str] = set()
    listed: list[str] = []
    flagged: list[Flagged] = []
    for (experiment, metric), nights in series(rows, fingerprint).items():
        nights = _finite(nights)
        if not nights:
            continue
        points, levels = _segments(nights)
        flagged += [
            Flagged(experiment, metric, nights[p], levels[i], levels[i + 1])
            for i, p in enumerate(points)
        ]
        title = f"{experiment} · {metric} (better: {nights[-1].better})"
        path = out_dir / _file_name(experiment, metric, taken)
        _plot(nights, points, levels, title, path)
        written.append(path)
        listed.append(f"- [{title}]({path.name}): {len(nights)} nights, {len(points)} change(s)")
    lines = ["# Nightly history", ""]
    lines.append(f"Fingerprint: `{fingerprint}`" if fingerprint else "No rows.")
    lines += ["", "## Plots", "", *(listed or ["(none)"]), "", "## Change points", ""]
    if flagged:
        lines += [
            "| experiment | metric | from night | commit | before | after | change | verdict |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for f in flagged:
            change = "-" if f.relative is None else f"{f.relative * 100:+.1f} %"
            lines.append(
                f"| {f.experiment} | {f.metric} | {f.at.created} | `{f.at.commit[:7]}` | "
                f"{_number(f.before)} | {_number(f.after)} | {change} | "
                f"{'worse' if f.worse else 'better'} |"
            )
    else:
        lines.append("None flagged.")
    index = out_dir / "index.md"
    index.write_text("\n".join(lines) + "\n")
    written.append(index)
    return written

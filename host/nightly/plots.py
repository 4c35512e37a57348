"""The nightly report's pictures, as inline SVG so that the HTML page needs nothing else."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt

from host.experiments import EXPERIMENT_TYPES
from host.nightly.stats import Comparison
from host.report import figure

_COLOURS = {"regressed": "#c62828", "improved": "#2e7d32", "unchanged": "#455a64"}


def svg(fig) -> str:
    """A figure as an SVG element (its XML prologue dropped), text kept as text. Drawn with
    the Agg backend: `host.report.figure` selects it, and nothing here opens a window."""
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def results_svg(runs: list[dict]) -> str:
    """Throughput and latency per experiment (and against hops), the sets overlaid."""
    return svg(figure(runs))


def ratios_svg(comparisons: list[Comparison]) -> str | None:
    """Each tested metric's ratio to the baseline with its interval, the noise floor shaded:
    a regression is a point whose whole bar sits outside the band on the worse side."""
    rows = [c for c in comparisons if c.ratio is not None and c.low is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    for y, c in enumerate(reversed(rows)):
        colour = _COLOURS.get(c.verdict, "#455a64")
        ax.plot([c.low, c.high], [y, y], color=colour, linewidth=2, alpha=0.9 if c.gated else 0.4)
        ax.plot([c.ratio], [y], "o", color=colour, mfc=colour if c.gated else "w")
        ax.fill_betweenx([y - 0.4, y + 0.4], 1 - c.floor, 1 + c.floor, color="#90a4ae", alpha=0.25)
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [c.name for c in reversed(rows)], fontsize=8)
    paired = any(c.method == "paired-t" for c in rows)
    estimate = (
        "geometric mean of the rounds' ratios, 95% t-interval"
        if paired
        else "ratio of medians, 95% bootstrap interval"
    )
    ax.set_xlabel(f"candidate / baseline ({estimate}; band: noise floor)")
    ax.set_title("Compared with the baseline (filled: gated; hollow: shown only)")
    fig.tight_layout()
    return svg(fig)


def sweep_svgs(data: dict) -> list[tuple[str, str]]:
    """One plot per swept parameter: each gated figure against the parameter's values, one
    line per sweep (experiment family). Returns (title, svg) pairs."""
    groups: dict[str, dict[str, list[tuple[float, float, str]]]] = {}
    for rec in data["results"]:
        sweep = rec.get("sweep")
        summary = rec.get("summary") or {}
        if not sweep or not summary:
            continue
        kind = EXPERIMENT_TYPES.get(rec["type"])
        if kind is None or not kind.gates:
            continue
        gate = kind.gates[0]
        value = summary.get(gate.key)
        if value is None:
            continue
        param = sweep["parameter"]
        groups.setdefault(param, {}).setdefault(f"{sweep['family']} ({gate.figure})", []).append(
            (float(sweep["value"]), float(value), rec["experiment"])
        )
    out = []
    for param, lines in groups.items():
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for label, points in lines.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xlabel(param)
        ax.set_ylabel("median over rounds")
        if param.endswith("size"):
            ax.set_xscale("log", base=2)
        ax.set_title(f"Sweep of {param}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append((f"sweep of {param}", svg(fig)))
    return out

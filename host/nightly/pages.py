"""The nightly's pages: a self-contained HTML report (jinja2, plots inline as SVG, no
network needed to open it) and a Markdown summary short enough for a CI job summary."""

from __future__ import annotations

import statistics
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from host.experiments import EXPERIMENT_TYPES
from host.nightly import fingerprint, plots
from host.nightly.crosscheck import cross_check
from host.nightly.junit import describe, detectable_text
from host.nightly.outcome import FAULT, OK, Outcome
from host.nightly.stats import ALPHA, CONFIDENCE, POWER, Comparison
from host.report import cell_text, figure_columns, path_label

METHOD = (
    "A metric regressed when a one-sided Mann-Whitney U test over its rounds, adjusted for "
    f"all gated metrics at once (Benjamini-Hochberg), is below {ALPHA} and the "
    f"{CONFIDENCE:.0%} bootstrap interval of the ratio of medians lies wholly beyond the "
    "metric's noise floor, and a confirming rerun keeps it so. User-level paths are gated on "
    "their ratio to the kernel path of the same round (/kernel), which cancels host drift; "
    "their raw figures are shown, not gated."
)

PAIRED_METHOD = (
    "The baseline is commit {rev}, its guest code measured in this night round by round "
    "beside the candidate's, in the same lab, the two arms alternating which runs first. "
    "A metric regressed when a one-sided t-test of the rounds' log ratios (candidate / "
    f"baseline of the same round), adjusted for all gated metrics at once (Benjamini-Hochberg), "
    f"is below {ALPHA}, the {CONFIDENCE:.0%} t-interval of the geometric mean ratio lies wholly "
    "beyond the metric's same-night noise floor, and a confirming rerun keeps it so. "
    "User-level paths are gated on their ratio to the kernel path of the same round "
    "(/kernel); their raw figures are shown, not gated."
)

VERDICT_TEXT = {
    "regressed": "REGRESSED",
    "improved": "improved",
    "unchanged": "unchanged",
    "insufficient": "too few rounds",
    "missing": "no figure on one side",
}


def _num(value: float | None, ratio: bool = False) -> str:
    if value is None:
        return "-"
    if ratio:
        return f"{value:.3f}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


#: What the detectable column means, under the comparison table and in the summary.
DETECTABLE_NOTE = (
    f"detectable: the smallest change for the worse this night's test would have flagged with "
    f"{POWER:.0%} power, given its spread, rounds and floor; 'none' when no change could pass "
    "with these rounds. Below it, 'unchanged' means not seen, not absent."
)


def _comparison_row(c: Comparison) -> dict:
    verdict = VERDICT_TEXT[c.verdict]
    if c.verdict == "regressed" and not c.gated:
        verdict = "worse (not gated)"
    if c.verdict == "regressed" and c.confirmed is False:
        verdict = "not confirmed by the rerun"
    ratio = c.ratio is not None
    return {
        "name": c.name,
        "gated": c.gated,
        "base_median": _num(statistics.median(c.base)) if c.base else "-",
        "cand_median": _num(statistics.median(c.cand)) if c.cand else "-",
        "ratio": _num(c.ratio, ratio=True) if ratio else "-",
        "interval": f"{c.low:.3f} - {c.high:.3f}" if c.low is not None else "-",
        "floor": f"{c.floor:.0%}",
        "detectable": detectable_text(c),
        "p": _num(c.p_adjusted if c.p_adjusted is not None else c.p_worse, ratio=True),
        "verdict": c.verdict if c.gated or c.verdict != "regressed" else "unchanged",
        "verdict_text": verdict,
    }


def _lab_section(data: dict, baseline: dict | None = None) -> dict:
    """A lab's table of figures and its plots, the baseline's bars beside the candidate's."""
    columns = figure_columns(data["results"])
    rows = []
    for rec in data["results"]:
        kind = EXPERIMENT_TYPES.get(rec["type"])
        keys = kind.columns if kind else {}
        s = rec["summary"] or {}
        cells = [cell_text(col, s.get(keys[col]) if col in keys else None) for col in columns]
        check = f"FAILED: {rec['errors'][0][:80]}" if rec["errors"] else "ok"
        rows.append([rec["experiment"], rec["type"], path_label(rec), *cells, check])
    return {
        "name": data["metadata"]["lab"],
        "header": ["experiment", "type", "path", *(c.title for c in columns), "check"],
        "rows": rows,
        "svg": plots.results_svg([baseline, data] if baseline else [data]),
        "sweeps": plots.sweep_svgs(data),
        "cross_check": [
            {
                k: (_num(v, ratio=k == "ratio") if isinstance(v, float) else v)
                for k, v in row.items()
            }
            for row in cross_check(data)
        ],
    }


def _same_lab(sets: list[dict] | None, data: dict) -> dict | None:
    lab = data["metadata"]["lab"]
    return next((d for d in sets or [] if d["metadata"]["lab"] == lab), None)


def _metadata_rows(outcome: Outcome) -> list[tuple[str, str, str]]:
    cand = outcome.candidate[0]["metadata"] if outcome.candidate else {}
    base = outcome.baseline[0]["metadata"] if outcome.baseline else {}
    fc, fb = fingerprint.fingerprint(cand), fingerprint.fingerprint(base) if base else {}
    rows = [
        ("created", cand.get("created", "-"), base.get("created", "-")),
        ("commit", str(cand.get("git_commit")), str(base.get("git_commit", "-"))),
        ("labs", ", ".join(d["metadata"]["lab"] for d in outcome.candidate), "-"),
        ("rounds", str(cand.get("rounds", "-")), str(base.get("rounds", "-"))),
    ]
    rows += [(k, str(fc.get(k)), str(fb.get(k, "-"))) for k in fingerprint.FIELDS]
    rows.append(("guest kernel", str(cand.get("guest_kernel")), str(base.get("guest_kernel"))))
    rows.append(("noise floors", outcome.floors, ""))
    return rows


def html(outcome: Outcome, title: str = "nightly") -> str:
    env = Environment(
        loader=PackageLoader("host.nightly", "templates"), autoescape=select_autoescape()
    )
    cand = outcome.candidate[0]["metadata"] if outcome.candidate else {}
    status = outcome.status
    return env.get_template("report.html.j2").render(
        title=title,
        status_class={OK: "ok", FAULT: "fault"}.get(status, "regressed"),
        status_text=outcome.status_text,
        created=outcome.created,
        commit=(cand.get("git_commit") or "unknown")[:12],
        accel=cand.get("accel", "-"),
        elapsed=f"{outcome.elapsed_s / 60:.1f} min" if outcome.elapsed_s else "",
        metadata=_metadata_rows(outcome),
        differences=outcome.differences,
        faults=outcome.faults,
        tiers=outcome.tiers,
        comparisons=[_comparison_row(c) for c in outcome.comparisons],
        ratios_svg=plots.ratios_svg(outcome.comparisons),
        method=PAIRED_METHOD.format(rev=outcome.baseline_rev[:12])
        if outcome.baseline_rev
        else METHOD,
        detectable_note=DETECTABLE_NOTE,
        no_baseline="No baseline: the figures are recorded for the next run to compare with.",
        labs=[_lab_section(d, _same_lab(outcome.baseline, d)) for d in outcome.candidate],
        tool_version=(cand.get("git_commit") or "")[:10],
    )


def markdown(outcome: Outcome, report_name: str = "report.html") -> str:
    """The job summary: the verdict, what regressed, the faults, the tiers, one line per
    gated metric; the HTML report has the rest."""
    cand = outcome.candidate[0]["metadata"] if outcome.candidate else {}
    lines = [
        f"## stackbed nightly: {outcome.status_text}",
        "",
        f"commit `{(cand.get('git_commit') or 'unknown')[:12]}` · {cand.get('accel', '-')} · "
        f"{outcome.elapsed_s / 60:.1f} min · full report: `{report_name}`",
        "",
    ]
    if outcome.baseline_rev:
        lines += [
            f"Baseline: commit `{outcome.baseline_rev[:12]}`, measured in this night, "
            "round by round beside the candidate (paired).",
            "",
        ]
    if outcome.faults or outcome.infrastructure_faults:
        lines += ["### Infrastructure faults", ""]
        lines += [f"- {f.splitlines()[0]}" for f in outcome.faults]
        for exp, runs in outcome.experiment_errors().items():
            lines.append(f"- {exp}: {runs[0]['kind']}: {runs[0]['error'].splitlines()[0]}")
        lines.append("")
    if outcome.regressions:
        lines += ["### Regressions", ""]
        lines += [f"- {describe(c)}" for c in outcome.regressions]
        lines.append("")
    if outcome.tiers:
        lines += ["| tier | tests | failed | errors | skipped |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {t.name} | {t.tests} | {t.failures} | {t.errors} | {t.skipped} |"
            for t in outcome.tiers
        ]
        lines.append("")
    gated = [c for c in outcome.comparisons if c.gated]
    if gated:
        lines += [
            "| metric | ratio | 95% interval | detectable | verdict |",
            "|---|---:|---:|---:|---|",
        ]
        for c in gated:
            row = _comparison_row(c)
            cells = (c.name, row["ratio"], row["interval"], row["detectable"], row["verdict_text"])
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", DETECTABLE_NOTE]
    elif outcome.baseline is None:
        lines.append("No baseline given: figures recorded only.")
    return "\n".join(lines) + "\n"


def write(outcome: Outcome, out_dir: Path, title: str = "nightly") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "report.html"
    page.write_text(html(outcome, title))
    summary = out_dir / "summary.md"
    summary.write_text(markdown(outcome))
    return page, summary

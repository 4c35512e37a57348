"""Results as a table (rich) and as plots (matplotlib), always from the saved JSON."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from guest.stack.factored.boundaries import BOUNDARIES
from host.experiments import EXPERIMENT_TYPES
from host.experiments.base import Column


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def figure_columns() -> list[Column]:
    """The results table's figure columns: every column some experiment type fills, by rank."""
    columns = {column for kind in EXPERIMENT_TYPES.values() for column in kind.columns}
    return sorted(columns, key=lambda column: column.rank)


def _cell(column: Column, value) -> str:
    return _pct(value) if column.percent else _fmt(value, column.spec)


def results_table(data: dict) -> Table:
    meta = data["metadata"]
    title = (
        f"stackbed · lab {meta['lab']} · {meta['accel'].upper()} · "
        f"{meta['host']['qemu']} · guest kernel {meta['guest_kernel']}"
    )
    table = Table(title=title, title_justify="left")
    for col in ("experiment", "type", "path"):
        table.add_column(col, justify="left")
    columns = figure_columns()
    for column in columns:
        table.add_column(column.title, justify="right")
    table.add_column("check", justify="left")
    for rec in data["results"]:
        s = rec["summary"] or {}
        kind = EXPERIMENT_TYPES.get(rec["type"])
        keys = kind.columns if kind else {}  # a type no longer known: its figures unshown
        if rec["errors"]:
            check = f"[red]FAILED[/red] {rec['errors'][0][:60]}"
        else:
            check = kind.check if kind else "ok"
        path = (kind and kind.path_label) or rec["path"]
        opts = rec.get("stack") or {}
        if opts:
            notes = [opts["offload"]]
            if opts["device"] == "packet":
                notes.append("socket")
            if rec["path"] == "factored":
                # older result files have no link: those ran the copy boundary
                link = BOUNDARIES.get(opts.get("link", "copy"))
                notes.append(link.label if link else str(opts.get("link")))
            path += f" ({'; '.join(notes)})"
        cells = [
            _cell(column, s.get(keys[column]) if column in keys else None) for column in columns
        ]
        table.add_row(rec["experiment"], rec["type"], path, *cells, check)
    boots = ", ".join(f"{k} {v:.1f} s" for k, v in meta["boot_seconds"].items() if v is not None)
    table.caption = (
        f"image {meta['image']['name']}-{meta['image']['digest']} · boot to SSH: "
        f"{boots} · commit {(meta['git_commit'] or 'unknown')[:10]}"
        f"{' (dirty)' if meta['git_dirty'] else ''}"
        + "".join(f" · {kind.note}" for kind in EXPERIMENT_TYPES.values() if kind.note)
        + (f" · medians of {meta['rounds']} rounds" if meta.get("rounds", 1) > 1 else "")
    )
    return table


def _per_round(record: dict, key: str) -> dict[int, float]:
    """The figure of each round (the median of that round's repeats), failed runs left out."""
    values: dict[int, list[float]] = {}
    for run in record["runs"]:
        if "error" not in run and run.get(key) is not None:
            values.setdefault(run.get("round", 1), []).append(run[key])
    return {r: statistics.median(v) for r, v in values.items()}


def comparisons(results: list[dict]) -> list[dict]:
    """Each experiment that names a baseline, as ratios of the baseline's figure.

    Ratios are paired by round (this round's figure over the baseline's in the same round),
    so that drift between rounds cancels out; their median and range are given. An
    experiment whose baseline was not run, or that shares no successful round with it, gets
    no ratio and says why.
    """
    by_name = {rec["experiment"]: rec for rec in results}
    out = []
    for rec in results:
        kind = EXPERIMENT_TYPES.get(rec["type"])
        if not rec.get("baseline") or kind is None or kind.compared is None:
            continue
        key, figure = kind.compared.key, kind.compared.figure
        entry: dict = {"experiment": rec["experiment"], "baseline": rec["baseline"]}
        entry |= {"figure": figure, "key": key, "ratios": [], "rounds": []}
        base = by_name.get(rec["baseline"])
        if base is None:
            out.append(entry | {"missing": "baseline not run"})
            continue
        mine, theirs = _per_round(rec, key), _per_round(base, key)
        for r in sorted(set(mine) & set(theirs)):
            if theirs[r]:
                entry["rounds"].append(r)
                entry["ratios"].append(mine[r] / theirs[r])
        if not entry["ratios"]:
            out.append(entry | {"missing": "no round where both succeeded"})
            continue
        ratios = entry["ratios"]
        entry |= {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        out.append(entry)
    return out


def comparison_table(data: dict) -> Table | None:
    """The baseline ratios as a table, or None if no experiment names a baseline."""
    rows = comparisons(data["results"])
    if not rows:
        return None
    rounds = data["metadata"].get("rounds", 1)
    table = Table(
        title=f"compared with a baseline, round by round ({rounds} round{'s' * (rounds > 1)})",
        title_justify="left",
    )
    for col, justify in (
        ("experiment", "left"),
        ("baseline", "left"),
        ("figure", "left"),
        ("ratio (median)", "right"),
        ("range", "right"),
        ("rounds", "right"),
    ):
        table.add_column(col, justify=justify)
    for row in rows:
        if "missing" in row:
            table.add_row(row["experiment"], row["baseline"], row["figure"], "-", row["missing"])
            continue
        low, high = _pct(row["min"], 1), _pct(row["max"], 1)
        spread = "-" if len(row["ratios"]) == 1 else f"{low} - {high}"
        table.add_row(
            row["experiment"],
            row["baseline"],
            row["figure"],
            _pct(row["median"], 1),
            spread,
            str(len(row["ratios"])),
        )
    table.caption = "ratio = this experiment's figure / the baseline's (p50: lower is faster)"
    return table


def print_results(data: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(data))
    if (table := comparison_table(data)) is not None:
        console.print(table)


def _plot_panel(record: dict) -> str | None:
    kind = EXPERIMENT_TYPES.get(record["type"])
    return kind.plot if kind else None


def plot(paths: list[Path], out: Path) -> Path:
    """Throughput and latency per experiment; several result files are overlaid as groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load(p) for p in paths]
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(runs)
    for i, data in enumerate(runs):
        label = f"{data['metadata']['created']} ({data['metadata']['accel']})"
        tp = [
            (r["experiment"], (r["summary"] or {}).get("mbit_per_s"))
            for r in data["results"]
            if _plot_panel(r) == "throughput"
        ]
        lat = [
            (
                r["experiment"],
                (r["summary"] or {}).get("p50_us"),
                (r["summary"] or {}).get("p99_us"),
            )
            for r in data["results"]
            if _plot_panel(r) == "latency"
        ]
        ax_tp.bar(
            [j + i * width for j in range(len(tp))], [v or 0 for _, v in tp], width, label=label
        )
        ax_tp.set_xticks(range(len(tp)), [n for n, _ in tp], rotation=20)
        xs = [j + i * width for j in range(len(lat))]
        ax_lat.bar(xs, [p or 0 for _, p, _ in lat], width, label=f"p50 {label}")
        ax_lat.scatter(
            xs,
            [q or 0 for _, _, q in lat],
            marker="_",
            s=200,
            color="k",
            label="p99" if i == 0 else None,
        )
        ax_lat.set_xticks(range(len(lat)), [n for n, _, _ in lat], rotation=20)
    for ax in (ax_tp, ax_lat):
        ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax_tp.set_ylabel("Mbit/s")
    ax_tp.set_title("Stream throughput")
    ax_lat.set_ylabel("µs")
    ax_lat.set_title("Request/response latency")
    ax_tp.legend(fontsize=7)
    ax_lat.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

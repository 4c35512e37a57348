"""Results as a table (rich) and as plots (matplotlib), always from the saved JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from guest.stack.factored.boundaries import BOUNDARIES
from host.experiments import EXPERIMENT_TYPES
from host.experiments.base import Column, ExperimentType
from host.forwarding import DEFAULT_MODE


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _types_of(results: list[dict]) -> list[ExperimentType]:
    """The registered types `results` use, in the registry's order."""
    used = {r["type"] for r in results}
    return [kind for name, kind in EXPERIMENT_TYPES.items() if name in used]


def figure_columns(results: list[dict] | None = None) -> list[Column]:
    """The results table's figure columns, by rank: every column the types of `results` fill
    (every registered type's, without results), so a table has no column it leaves empty."""
    kinds = list(EXPERIMENT_TYPES.values()) if results is None else _types_of(results)
    columns = {column for kind in kinds for column in kind.columns}
    return sorted(columns, key=lambda column: column.rank)


def cell_text(column: Column, value) -> str:
    """A figure as its table column shows it."""
    return _pct(value) if column.percent else _fmt(value, column.spec)


def _forward_mode(rec: dict) -> str | None:
    """The forwarding mode of a record whose route crosses a middle node, unless it is the
    default (kernel forwarding, all that results saved before modes existed ran)."""
    mode = (rec.get("forward") or {}).get("mode", DEFAULT_MODE)
    return mode if mode != DEFAULT_MODE and (forwarding_hops(rec) or 0) > 0 else None


def path_label(rec: dict) -> str:
    """The path as the table shows it, with the stack options that set its figures apart,
    then the middle nodes' forwarding mode where it is not the kernel's ("kernel ·
    socket-proxy")."""
    kind = EXPERIMENT_TYPES.get(rec["type"])
    path = (kind and kind.path_label) or rec["path"]
    if path == "floor":
        path = "floor (raw frames, ring)"
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
    if mode := _forward_mode(rec):
        path += f" · {mode}"
    return path


def results_table(data: dict) -> Table:
    meta = data["metadata"]
    title = (
        f"stackbed · lab {meta['lab']} · {meta['accel'].upper()} · "
        f"{meta['host']['qemu']} · guest kernel {meta['guest_kernel']}"
    )
    table = Table(title=title, title_justify="left")
    for col in ("experiment", "type", "path"):
        table.add_column(col, justify="left")
    columns = figure_columns(data["results"])
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
        cells = [
            cell_text(column, s.get(keys[column]) if column in keys else None) for column in columns
        ]
        table.add_row(rec["experiment"], rec["type"], path_label(rec), *cells, check)
    boots = ", ".join(f"{k} {v:.1f} s" for k, v in meta["boot_seconds"].items() if v is not None)
    table.caption = (
        f"image {meta['image']['name']}-{meta['image']['digest']} · boot to SSH: "
        f"{boots} · commit {(meta['git_commit'] or 'unknown')[:10]}"
        f"{' (dirty)' if meta['git_dirty'] else ''}"
        + "".join(f" · {kind.note}" for kind in _types_of(data["results"]) if kind.note)
        + (f" · medians of {meta['rounds']} rounds" if meta.get("rounds", 1) > 1 else "")
        + _link_note(data)
    )
    return table


def _link_note(data: dict) -> str:
    """A warning when the links lost frames on the host (host.linkbuf): figures the lab file's
    impairments do not explain. Silent for result files from before links were counted."""
    dropped = sum(
        run.get("link_drops") or 0 for rec in data["results"] for run in rec.get("runs", [])
    )
    if not dropped:
        return ""
    buffers = "" if data["metadata"].get("link_rcvbuf") else ", their buffers at the host default"
    return f" · [yellow]the links dropped {dropped} frames on the host{buffers}[/yellow]"


def per_round(record: dict, key: str) -> dict[int, float]:
    """The figure of each round (the median of that round's repeats), failed runs and runs
    without a number for it left out."""
    values: dict[int, list[float]] = {}
    for run in record["runs"]:
        if "error" not in run and isinstance(run.get(key), int | float):
            values.setdefault(run.get("round", 1), []).append(float(run[key]))
    return {r: statistics.median(v) for r, v in values.items()}


def comparisons(results: list[dict]) -> list[dict]:
    """Each experiment that names a baseline, as ratios of the baseline's figure; then each
    user-level stack's experiment against the floor experiment of its type and ends, if the
    lab ran one (the floor names the kernel as its baseline, and a stack has one baseline).

    Ratios are paired by round (this round's figure over the baseline's in the same round),
    so that drift between rounds cancels out; their median and range are given. An
    experiment whose baseline was not run, or that shares no successful round with it, gets
    no ratio and says why.
    """
    by_name = {rec["experiment"]: rec for rec in results}
    out = []
    for rec in results:
        if rec.get("baseline"):
            entry = _ratios(rec, rec["baseline"], by_name.get(rec["baseline"]))
            if entry is not None:
                out.append(entry)
    for rec in results:
        if rec.get("path") in ("mono", "factored"):
            floor = _floor_of(rec, results)
            if floor is not None and floor["experiment"] != rec.get("baseline"):
                entry = _ratios(rec, floor["experiment"], floor)
                if entry is not None:
                    out.append(entry)
    return out


def _floor_of(rec: dict, results: list[dict]) -> dict | None:
    """The floor experiment measuring the same thing as `rec` between the same nodes."""
    for other in results:
        if (
            other.get("path") == "floor"
            and other["type"] == rec["type"]
            and (other.get("client"), other.get("server")) == (rec.get("client"), rec.get("server"))
        ):
            return other
    return None


def _ratios(rec: dict, base_name: str, base: dict | None) -> dict | None:
    """`rec`'s figure over `base`'s, round by round (None: its type compares nothing)."""
    kind = EXPERIMENT_TYPES.get(rec["type"])
    if kind is None or kind.compared is None:
        return None
    key, figure = kind.compared.key, kind.compared.figure
    entry: dict = {"experiment": rec["experiment"], "baseline": base_name}
    entry |= {"figure": figure, "key": key, "ratios": [], "rounds": []}
    if base is None:
        return entry | {"missing": "baseline not run"}
    mine, theirs = per_round(rec, key), per_round(base, key)
    for r in sorted(set(mine) & set(theirs)):
        if theirs[r]:
            entry["rounds"].append(r)
            entry["ratios"].append(mine[r] / theirs[r])
    if not entry["ratios"]:
        return entry | {"missing": "no round where both succeeded"}
    ratios = entry["ratios"]
    return entry | {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


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


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def forwarding_table(data: dict) -> Table | None:
    """Each middle node of each experiment: what its forwarding cost and moved (medians over
    the runs), or None if no experiment crossed a middle node."""
    rows = [
        (rec, node, figures)
        for rec in data["results"]
        for node, figures in ((rec.get("forward") or {}).get("middles") or {}).items()
    ]
    if not rows:
        return None
    table = Table(title="middle nodes (medians over the runs)", title_justify="left")
    for col in ("experiment", "forward", "node"):
        table.add_column(col, justify="left")
    for col in ("guest CPU", "fwd pkt/s", "relayed MB/s", "syscalls/MB", "user copy MB", "drops"):
        table.add_column(col, justify="right")
    for rec, node, f in rows:
        table.add_row(
            rec["experiment"],
            rec["forward"]["mode"],
            node,
            _pct(f.get("cpu")),
            _fmt(f.get("forwarded_packets_per_s")),
            _mb(f.get("relayed_bytes_per_s")),
            _fmt(f.get("syscalls_per_mb"), ".1f"),
            _mb(f.get("user_copy_bytes")),
            _fmt(f.get("drops"), ".0f"),
        )
    return table


#: The layers of a stack's CPU profile, in the table's order (guest/stack/cpuprofile.py).
PROFILE_LAYERS = ("wire", "tcp", "core", "session", "device", "loop", "syscalls", "other")


def stack_costs(rec: dict) -> list[dict]:
    """What each user-level stack of an experiment spent per unit of work (a transaction for
    rr, a megabyte for stream), from its loop's own CPU count and, when the run was profiled,
    by layer; one entry per side, from the first successful run that has the figures."""
    per_mb = rec["type"] == "stream"
    for run in rec["runs"]:
        stack = run.get("stack") or {}
        units = run.get("bytes", 0) / 1e6 if per_mb else run.get("transactions", 0)
        if "error" in run or not units or not any("cpu" in v for v in stack.values()):
            continue
        out = []
        for side in ("client", "server"):
            figures = stack.get(side) or {}
            if "cpu" not in figures:
                continue
            cpu = figures["cpu"]["user_s"] + figures["cpu"]["system_s"]
            entry = {"side": side, "unit": "MB" if per_mb else "transaction"}
            entry["cpu_us"] = cpu / units * 1e6
            if not per_mb and "loop" in figures:
                entry["passes"] = figures["loop"]["passes"] / units
            if profile := figures.get("profile"):
                total = profile["cpu_s"] or 1.0
                entry["layers"] = {k: v / total for k, v in profile["layers"].items()}
                entry["profiled_us"] = profile["cpu_s"] / units * 1e6
            out.append(entry)
        return out
    return []


def stack_cost_table(data: dict) -> Table | None:
    """The user-level stacks' CPU per transaction or per MB, by layer when profiled."""
    rows = [(rec, cost) for rec in data["results"] for cost in stack_costs(rec)]
    if not rows:
        return None
    profiled = any("layers" in cost for _, cost in rows)
    table = Table(title="where the user-level stacks' CPU goes", title_justify="left")
    for col in ("experiment", "side", "CPU µs per", "loop passes"):
        table.add_column(col, justify="left" if col in ("experiment", "side") else "right")
    layers = PROFILE_LAYERS if profiled else ()
    for layer in layers:
        table.add_column(layer, justify="right")
    for rec, cost in rows:
        cells = [
            rec["experiment"],
            cost["side"],
            f"{cost['cpu_us']:,.0f} / {cost['unit']}",
            _fmt(cost.get("passes"), ".2f"),
        ]
        shares = cost.get("layers", {})
        cells += [_pct(shares[layer]) if layer in shares else "-" for layer in layers]
        table.add_row(*cells)
    table.caption = (
        "CPU of each stack's loop (process, or the factored protocol domain) over the run, "
        "per rr transaction or per MB streamed; loop passes per transaction"
        + (
            " · by layer: shares of the profiled CPU (cProfile roughly doubles it: compare "
            "profiled runs with profiled runs only)"
            if profiled
            else ""
        )
    )
    return table


def print_results(data: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(data))
    if (table := comparison_table(data)) is not None:
        console.print(table)
    if (table := stack_cost_table(data)) is not None:
        console.print(table)
    if (table := forwarding_table(data)) is not None:
        console.print(table)


def _plot_panel(record: dict) -> str | None:
    kind = EXPERIMENT_TYPES.get(record["type"])
    return kind.plot if kind else None


#: The summary figure each panel draws against hops.
_HOP_FIGURE = {"throughput": "mbit_per_s", "latency": "p50_us"}


@dataclass(frozen=True)
class HopPoint:
    """One experiment of a series: its forwarding hops and figures."""

    hops: int
    experiment: str
    value: float  # the summary's figure: mbit_per_s (throughput) or p50_us (latency)
    rounds: tuple[float, ...] = ()  # that figure per round (its repeats' median), by round
    p99: float | None = None  # latency only


@dataclass(frozen=True)
class HopSeries:
    """Experiments that differ only by their route, in one plot panel, ordered by hops."""

    panel: Literal["throughput", "latency"]
    path: str  # as the table shows it, stack options included
    points: list[HopPoint] = field(default_factory=list)


def forwarding_hops(record: dict) -> int | None:
    """The nodes forwarding between client and server (0: linked directly); None for a
    result saved before routes were recorded."""
    route = record.get("route")
    return len(route["nodes"]) - 2 if route and route.get("nodes") else None


def hop_series(data: dict) -> dict[str, HopSeries]:
    """A result file's figures against forwarding hops, by series, or {} when its plotted
    records do not span at least two hop counts (a line needs two points).

    A series is the records of one type and one path as the table shows it, stack options
    included ("kernel stream", "mono (all; socket) rr"): the table's label already leaves
    out the options a path ignores, so it groups what is comparable. Failed records
    (summary None), a missing figure and records without a route are left out.
    """
    series: dict[str, HopSeries] = {}
    for rec in data["results"]:
        panel = _plot_panel(rec)
        hops = forwarding_hops(rec)
        summary = rec.get("summary")
        if panel not in _HOP_FIGURE or hops is None or not summary:
            continue
        key = _HOP_FIGURE[panel]
        if summary.get(key) is None:
            continue
        rounds = per_round(rec, key)
        point = HopPoint(
            hops,
            rec["experiment"],
            summary[key],
            tuple(rounds[r] for r in sorted(rounds)),
            summary.get("p99_us") if panel == "latency" else None,
        )
        path = path_label(rec)
        series.setdefault(f"{path} {rec['type']}", HopSeries(panel, path)).points.append(point)
    if len({p.hops for s in series.values() for p in s.points}) < 2:
        return {}
    for s in series.values():
        s.points.sort(key=lambda p: p.hops)  # stable: the file's order within a hop count
    return series


def _file_label(data: dict) -> str:
    return f"{data['metadata']['created']} ({data['metadata']['accel']})"


def _name_ticks(ax, names: list[str]) -> None:
    """Experiment names under the bars, slanted more steeply when there are many, so that
    long names (proxy.yaml's) do not run into each other."""
    many = len(names) > 6
    ax.set_xticks(
        range(len(names)), names, rotation=45 if many else 20, ha="right" if many else "center"
    )


def _plot_bars(ax_tp, ax_lat, runs: list[dict]) -> None:
    """Throughput and latency per experiment, one group of bars per result file."""
    width = 0.8 / len(runs)
    for i, data in enumerate(runs):
        label = _file_label(data)
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
        _name_ticks(ax_tp, [n for n, _ in tp])
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
        _name_ticks(ax_lat, [n for n, _, _ in lat])
    for ax in (ax_tp, ax_lat):
        ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax_tp.set_ylabel("Mbit/s")
    ax_tp.set_title("Stream throughput")
    ax_lat.set_ylabel("µs")
    ax_lat.set_title("Request/response latency")
    ax_tp.legend(fontsize=7)
    ax_lat.legend(fontsize=7)


_FILE_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]


def _plot_hops(ax_tp, ax_lat, runs: list[dict], series: list[dict[str, HopSeries]]) -> None:
    """Each series as a line through its medians against forwarding hops.

    A path keeps its colour in both panels and across files, and a file its line style and
    marker, so the same series from two runs reads as one colour, two styles. p99 is a
    faint line of the same colour and style with a tick at each point (the bar chart's
    tick), above its p50 line; with several rounds each round's figure is a faint dot at
    the median's hop count, files nudged apart so their dots do not hide each other.
    """
    from matplotlib.lines import Line2D

    colours: dict[str, str] = {}
    for file_series in series:
        for s in file_series.values():
            colours.setdefault(s.path, f"C{len(colours) % 10}")
    axes = {"throughput": ax_tp, "latency": ax_lat}
    shown: set[str] = set()
    spread = 0.06 * (len(runs) - 1)
    for i, (data, file_series) in enumerate(zip(runs, series, strict=True)):
        linestyle, marker = _FILE_STYLES[i % len(_FILE_STYLES)]
        suffix = f" · {_file_label(data)}" if len(runs) > 1 else ""
        nudge = (i / (len(runs) - 1) - 0.5) * 2 * spread if len(runs) > 1 else 0.0
        for label, s in file_series.items():
            ax, colour = axes[s.panel], colours[s.path]
            xs = [p.hops for p in s.points]
            ax.plot(
                xs,
                [p.value for p in s.points],
                linestyle=linestyle,
                marker=marker,
                color=colour,
                label=label + suffix,
            )
            for p in s.points:
                if len(p.rounds) > 1:
                    ax.scatter(
                        [p.hops + nudge] * len(p.rounds), p.rounds, s=12, color=colour, alpha=0.35
                    )
                    shown.add(s.panel + " rounds")
            p99 = [(p.hops, p.p99) for p in s.points if p.p99 is not None]
            if p99:
                ax.plot(
                    *zip(*p99, strict=True),
                    linestyle=linestyle,
                    linewidth=1,
                    marker="_",
                    markersize=14,
                    alpha=0.5,
                    color=colour,
                )
                shown.add("p99")
    hops = sorted({p.hops for fs in series for s in fs.values() for p in s.points})
    grey = {"color": "grey", "linestyle": ""}
    for panel, ax in axes.items():
        ax.set_xticks(hops)
        ax.set_xlim(hops[0] - 0.4, hops[-1] + 0.4)
        ax.set_xlabel("forwarding hops (0: client and server linked directly)")
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1) * 1.25)  # room for the legend
        extra = []
        if panel == "latency" and "p99" in shown:
            extra.append(
                Line2D([], [], marker="_", markersize=14, alpha=0.5, label="p99 (faint)", **grey)
            )
        if panel + " rounds" in shown:
            extra.append(
                Line2D([], [], marker="o", markersize=4, alpha=0.35, label="each round", **grey)
            )
        if ax.has_data():
            ax.legend(handles=ax.get_legend_handles_labels()[0] + extra, fontsize=7, loc="best")
        else:  # e.g. a sweep of streams only: say so rather than leave a blank frame
            ax.text(0.5, 0.5, "no such experiment", ha="center", transform=ax.transAxes)
    ax_tp.set_ylabel("Mbit/s")
    ax_tp.set_title("Stream throughput against forwarding hops (median)")
    ax_lat.set_ylabel("µs")
    ax_lat.set_title("Request/response latency against forwarding hops (p50)")


def figure(runs: list[dict]):
    """Throughput and latency per experiment; several result sets are overlaid as groups.

    When a set's experiments span several forwarding-hop counts (`hop_series`), a second
    row plots the same figures against hops. It is a row of the same figure rather than a
    figure of its own so that one run still gives one picture, wherever it is drawn, and
    the bars stay next to the lines that summarise them. Other sets plot as one row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [hop_series(data) for data in runs]
    if any(series):
        fig, axes = plt.subplots(2, 2, figsize=(11, 8.6))
        _plot_bars(*axes[0], runs)
        _plot_hops(*axes[1], runs, series)
    else:
        fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
        _plot_bars(ax_tp, ax_lat, runs)
    fig.tight_layout()
    return fig


def plot(paths: list[Path], out: Path) -> Path:
    """`figure` of one or more result files, as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure([load(p) for p in paths])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

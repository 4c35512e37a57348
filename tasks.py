"""stackbed's command line: `invoke --list` shows every task, `invoke --help TASK` its options."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from invoke import Collection, Exit, task
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
console = Console(width=None if sys.stdout.isatty() else 160)
DEFAULT_CONFIG = "configs/default.yaml"


def _say(msg: str) -> None:
    console.print(msg, highlight=False)


def _load(config: str):
    from host.config import ConfigError, load_lab

    try:
        return load_lab(config)
    except ConfigError as e:
        console.print(f"[red]invalid lab file[/red]\n{e}", highlight=False)
        raise Exit(code=2) from None
    except FileNotFoundError:
        raise Exit(f"no such lab file: {config}", code=2) from None


def _check_injection() -> None:
    """A bad fault-injection setting is refused before anything starts."""
    from host.bench import injected_rx_us
    from host.experiments import BenchError

    try:
        if rx_us := injected_rx_us():
            _say(f"[yellow]fault injection on: {rx_us:g} µs per received frame[/yellow]")
    except BenchError as err:
        raise Exit(str(err), code=2) from None


# --- doctor ---------------------------------------------------------------------------------


@task(
    help={
        "fix": "start libvirt daemons and fix /dev/kvm permissions, then check",
        "probe": "boot a guest under KVM now to decide the accelerator",
    }
)
def doctor(c, fix=False, probe=False):
    """Check every prerequisite and say how to fix what is missing."""
    from host.daemons import ensure_daemons, fix_kvm_device
    from host.doctor import run_checks

    if fix:
        started = ensure_daemons()
        changed = fix_kvm_device()
        _say(
            f"started: {', '.join(started) or 'nothing'}; /dev/kvm "
            f"{'fixed' if changed else 'unchanged'}"
        )
    table = Table(title="stackbed doctor", title_justify="left")
    for col in ("check", "status", "detail", "how to fix"):
        table.add_column(col)
    failed = False
    for ch in run_checks(probe=probe):
        status = (
            "[green]ok[/green]"
            if ch.ok
            else ("[red]MISSING[/red]" if ch.required else "[yellow]warn[/yellow]")
        )
        failed |= ch.required and not ch.ok
        table.add_row(ch.name, status, ch.detail, "" if ch.ok else ch.fix)
    console.print(table)
    if failed:
        raise Exit("some prerequisites are missing (see 'how to fix')", code=1)


# --- image ----------------------------------------------------------------------------------


@task(help={"name": "recipe under images/ (default: default)", "force": "rebuild even if cached"})
def image_build(c, name="default", force=False):
    """Build the guest image from its recipe (cached by a hash of the recipe)."""
    from host.image import build_image, prune_cache

    img = build_image(name, force=force, progress=_say)
    for p in prune_cache(img):
        _say(f"removed old build {p.name}")
    m = img.manifest
    _say(
        f"kernel {m['kernel_version']} ({m['kernel_boot_file']}), python {m['python_version']}, "
        f"{len(m['packages'])} packages; manifest: {img.path / 'manifest.json'}"
    )


@task(help={"name": "recipe under images/"})
def image_manifest(c, name="default"):
    """Print the manifest (package versions) of the cached image."""
    from host.image import cached_image

    img = cached_image(name)
    if img is None:
        raise Exit(f"image {name} is not built: invoke image.build", code=1)
    print(json.dumps(img.manifest, indent=2))


# --- lab ------------------------------------------------------------------------------------


def _state(name: str):
    from host.lab import LabState

    state = LabState.load(name)
    if state is None or not state.owner_alive():
        raise Exit(f"lab {name!r} is not running (invoke lab.up)", code=1)
    return state


@task(
    help={
        "config": f"lab file (default {DEFAULT_CONFIG})",
        "name": "lab name override",
        "accel": "force kvm or tcg (default: probe)",
    }
)
def lab_up(c, config=DEFAULT_CONFIG, name=None, accel=None):
    """Start a lab that stays up until lab.down (owned by a background keeper process)."""
    cfg = _load(config)
    cmd = [sys.executable, "-m", "host.keeper", config]
    cmd += ["--name", name] if name else []
    cmd += ["--accel", accel] if accel else []
    keeper = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for line in keeper.stdout:
            line = line.rstrip("\n")
            if line.startswith("READY "):
                keeper.stdout.close()
                _say(
                    f"lab {name or cfg.lab} is up (keeper pid {keeper.pid}); "
                    f"`invoke lab.status`, `invoke lab.ssh NODE`, `invoke lab.down`"
                )
                return
            if line.startswith("FAILED "):
                raise Exit(line[7:], code=1)
            _say(line)
        raise Exit(f"keeper exited with {keeper.wait()} before the lab was ready", code=1)
    except KeyboardInterrupt:
        from host.sweep import stop_owner

        _say("interrupted: tearing the lab down")
        stop_owner(keeper.pid)
        raise Exit(code=130) from None


@task(help={"name": "lab name (default: the config's)", "config": "lab file"})
def lab_status(c, name=None, config=DEFAULT_CONFIG):
    """Show a running lab: nodes, SSH ports, NICs and addresses, routes, boot times."""
    state = _state(name or _load(config).lab)
    table = Table(
        title=f"lab {state.lab} · {state.accel.upper()} · slot {state.slot} · "
        f"owner pid {state.owner_pid} · up "
        f"{time.time() - state.created:.0f} s",
        title_justify="left",
    )
    for col in ("node", "domain", "ssh", "boot", "NICs", "routes", "console log"):
        table.add_column(col)
    for n in state.nodes:
        netem = {
            i["dev"]: " ".join(f"{k} {v}" for k, v in i.items() if k not in ("link", "dev"))
            for i in n.impairments
        }
        nics = "\n".join(
            f"{x['name']} {x['address']} ({x['model']}, mtu {x['mtu']}, link {x['link']})"
            + (f"\n  sends with netem {netem[x['name']]}" if netem.get(x["name"]) else "")
            for x in n.nics
        )
        routes = [f"{r['subnet']} via {r['via']} dev {r['dev']}" for r in n.routes]
        if n.forwarding:
            routes.append("(forwards)")
        boot = f"{n.boot_seconds:.1f} s" if n.boot_seconds is not None else "-"
        table.add_row(
            n.name,
            n.domain,
            f"127.0.0.1:{n.ssh_port}",
            boot,
            nics,
            "\n".join(routes) or "-",
            n.console_log,
        )
    console.print(table)


@task(
    help={
        "node": "node name",
        "name": "lab name",
        "config": "lab file",
        "command": "run this command instead of an interactive shell",
    }
)
def lab_ssh(c, node, name=None, config=DEFAULT_CONFIG, command=None):
    """Open a shell (or run a command) on a node of a running lab."""
    state = _state(name or _load(config).lab)
    n = state.node(node)
    args = [
        "ssh",
        "-i",
        state.key_path,
        "-p",
        str(n.ssh_port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "root@127.0.0.1",
    ]
    if command:
        args.append(command)
    os.execvp("ssh", args)


@task(
    help={
        "node": "node name",
        "name": "lab name",
        "config": "lab file",
        "log": "print the console log instead of attaching",
    }
)
def lab_console(c, node, name=None, config=DEFAULT_CONFIG, log=False):
    """Attach to a node's serial console (Ctrl-] leaves), or print its log with --log."""
    lab = name or _load(config).lab
    from host.paths import console_log_dir

    if log:
        path = console_log_dir(lab) / f"{node}.console.log"
        if not path.exists():
            raise Exit(f"no console log {path}", code=1)
        print(path.read_text(errors="replace"), end="")
        return
    state = _state(lab)
    os.execvp("virsh", ["virsh", "-c", "qemu:///system", "console", state.node(node).domain])


@task(
    help={
        "link": "link name (lab.status shows each NIC's link)",
        "seconds": "how long to capture (default 10)",
        "out": "pcap to write (default results/captures/STAMP-LAB-LINK.pcap)",
        "name": "lab name",
        "config": "lab file",
        "max_bytes": "stop when the file reaches this size (default 64 MiB)",
        "snaplen": "bytes kept of each frame (default 65535: whole frames)",
    }
)
def lab_capture(
    c,
    link,
    seconds=10.0,
    out=None,
    name=None,
    config=DEFAULT_CONFIG,
    max_bytes=None,
    snaplen=None,
):
    """Capture a link of a running lab to a pcap, from the host side (QEMU's filter-dump)."""
    from host.capture import Bounds, Capture, CaptureError, default_capture_path

    state = _state(name or _load(config).lab)
    try:
        seconds = float(seconds)
        sizes = {"max_bytes": max_bytes, "snaplen": snaplen}
        bounds = Bounds(**{k: int(v) for k, v in sizes.items() if v is not None})
    except (ValueError, CaptureError) as e:
        raise Exit(f"lab.capture: {e}", code=2) from None
    if seconds <= 0:
        raise Exit(f"--seconds must be positive, not {seconds:g}", code=2)
    try:
        cap = Capture(
            state,
            link,
            Path(out) if out else default_capture_path(state.lab, link),
            bounds,
        )
        _say(f"capturing link {link} at node {cap.end.node} for {seconds:g} s (Ctrl-C stops)")
        with cap, contextlib.suppress(KeyboardInterrupt):
            cap.wait(seconds)
    except CaptureError as e:
        raise Exit(f"lab.capture: {e}", code=2) from None
    r = cap.result
    _say(
        f"{r.frames} frames, {r.bytes} bytes in {r.seconds:.1f} s"
        + (f" (stopped early: reached the {r.max_bytes}-byte bound)" if r.bound_reached else "")
        + f"\npcap: {r.path}   (tcpdump -r {r.path})"
    )


@task(help={"name": "lab name (default: the config's)", "config": "lab file"})
def lab_down(c, name=None, config=DEFAULT_CONFIG):
    """Stop a lab started with lab.up: destroy its domains, remove its files."""
    from host.lab import LabState
    from host.sweep import sweep

    lab = name or _load(config).lab
    state = LabState.load(lab)
    if state is None:
        _say(f"lab {lab} is not running")
    report = sweep(lab=lab, force=True)
    _say(
        f"lab {lab} down: {len(report.domains)} leftover domain(s) destroyed, owner(s) "
        f"stopped: {report.owners_stopped or 'none'}"
    )


@task(help={"lab": "only this lab", "force": "also stop labs whose owner still runs"})
def lab_sweep(c, lab=None, force=False):
    """Find and remove anything any lab left behind (domains by tag, keepers, files)."""
    from host.sweep import sweep

    r = sweep(lab=lab, force=force)
    _say(
        f"domains destroyed: {r.domains or 'none'}; owners stopped: {r.owners_stopped or 'none'}"
        f"; run folders removed: {len(r.run_dirs)}; stale slot locks removed: {len(r.slot_locks)}"
    )
    if r.kept:
        _say(f"still running (left alone; --force stops them): {', '.join(r.kept)}")


# --- bench ----------------------------------------------------------------------------------


@task(
    help={
        "config": f"lab file (default {DEFAULT_CONFIG})",
        "only": "comma-separated experiment names",
        "accel": "force kvm or tcg",
        "out": "results folder (default results/)",
        "plot": "also write a PNG plot",
        "rounds": "run the experiments N times over, interleaved (default 1); the report "
        "gives medians and each baseline ratio paired round by round",
        "profile": "the user-level stacks profile their loop and report where their CPU went, "
        "by layer, per transaction or per MB (costs them CPU: compare profiled runs only)",
    }
)
def bench(
    c, config=DEFAULT_CONFIG, only=None, accel=None, out=None, plot=False, rounds=1, profile=False
):
    """Run a lab's experiments and print/save the results (JSON, table, optional plot).

    Uses the lab if it is already up (lab.up), with this tree's guest code deployed to it
    first; otherwise brings one up for the run and tears it down afterwards, whatever happens.
    """
    from host.accel import accel_for
    from host.bench import (
        INFRA,
        metadata,
        result_stem,
        run_experiments,
        save_results,
        source_revision,
    )
    from host.health import lost_nodes
    from host.image import cached_image
    from host.lab import Lab, LabState, terminate_on_sigterm
    from host.report import load, print_results
    from host.report import plot as make_plot

    cfg = _load(config)
    if not cfg.experiments:
        raise Exit(f"{config} defines no experiments", code=2)
    names = only.split(",") if only else None
    out_dir = Path(out) if out else None
    if not str(rounds).isdigit() or int(rounds) < 1:
        raise Exit(f"--rounds must be a whole number of at least 1, not {rounds!r}", code=2)
    rounds = int(rounds)
    _check_injection()
    if profile:
        from host.bench import PROFILE_ENV

        os.environ[PROFILE_ENV] = "1"
    stem = result_stem(cfg.lab, out_dir)
    captures = stem.with_name(stem.name + ".captures")  # used only by experiments with capture:
    running = LabState.load(cfg.lab)
    terminate_on_sigterm()
    if running is not None and running.owner_alive():
        _say(f"using running lab {cfg.lab} (owner pid {running.owner_pid})")
        guests = {n.name: running.guest(n.name) for n in running.nodes}
        # The lab got the guest code of the tree it was started from: measure this tree's.
        _say(f"deploying this tree's guest code to {', '.join(guests)}")
        revision = source_revision()
        for g in guests.values():
            g.deploy()
        records = run_experiments(
            cfg,
            running,
            guests.__getitem__,
            names,
            _say,
            rounds,
            captures,
            health=lambda: lost_nodes(running),
        )
        img = cached_image(cfg.image)
        meta = metadata(cfg, running, img.manifest if img else {}, rounds, revision)
        for g in guests.values():
            g.close()
    else:
        with Lab(cfg, accel=accel_for(cfg.image, accel, progress=_say), progress=_say) as lab:
            revision = source_revision()  # what lab.up deploys
            state = lab.up()
            records = run_experiments(
                cfg,
                state,
                lab.guest,
                names,
                _say,
                rounds,
                captures,
                health=lambda: lost_nodes(state),
            )
            meta = metadata(cfg, state, lab.image.manifest, rounds, revision)
    path = save_results(meta, records, stem=stem)
    print_results(load(path), console)
    _say(f"results: {path}")
    if captures.exists():
        _say(f"captures: {captures}")
    if plot:
        png = make_plot([path], path.with_suffix(".png"))
        _say(f"plot: {png}")
    kinds = {run.get("error_kind") for r in records for run in r["runs"] if "error" in run}
    if INFRA in kinds:
        raise Exit("infrastructure fault: a guest was lost (see the table)", code=2)
    if kinds:
        raise Exit("some experiments failed (see the table)", code=1)


@task(help={"results": "result JSON files (default: results/latest.json)", "out": "PNG to write"})
def plot(c, results=None, out=None):
    """Plot one or more result files (overlaid) to a PNG."""
    from host.paths import results_dir
    from host.report import plot as make_plot

    paths = [Path(p) for p in results.split(",")] if results else [results_dir() / "latest.json"]
    png = make_plot(paths, Path(out) if out else paths[0].resolve().with_suffix(".png"))
    _say(f"plot: {png}")


@task(help={"results": "a result JSON file (default: results/latest.json)"})
def show(c, results=None):
    """Print a saved result file as a table."""
    from host.paths import results_dir
    from host.report import load, print_results

    print_results(load(Path(results) if results else results_dir() / "latest.json"), console)


# --- nightly --------------------------------------------------------------------------------

NIGHTLY_CONFIG = "configs/nightly.yaml"
NOISE_FLOORS = "configs/nightly/noise-floors.yaml"  # not a lab file: its own folder


def _floors(path: str):
    from host.nightly.stats import Floors

    try:
        return Floors.load(Path(path))
    except ValueError as err:
        raise Exit(str(err), code=2) from None


def _result_sets(path: str, what: str):
    from host.nightly.outcome import load_sets

    try:
        return load_sets(Path(path))
    except ValueError as err:
        raise Exit(f"{what}: {err}", code=2) from None


@task(
    help={
        "configs": f"comma-separated lab files (default {NIGHTLY_CONFIG})",
        "out": "output folder (default results/nightly-STAMP)",
        "rounds": "interleaved rounds per lab (default 5: the rank test needs 5 a side)",
        "confirm": "rounds of the confirming rerun of what looks regressed (default 3; 0: none)",
        "baseline": "a nightly results.json or a bench result file to compare with",
        "baseline_rev": "a git revision whose guest code is measured in the same night, round "
        "by round beside this tree's, as the baseline (paired; cancels the host's drift)",
        "tiers": "comma-separated test tiers to run first: unit,netns,vm (default all; "
        "'none' for none)",
        "floors": f"noise floors file (default {NOISE_FLOORS})",
        "history": "CSV history store to append to (default history/nightly.csv; 'none')",
        "allow_different": "compare even if the fingerprints differ (named in the report)",
        "accel": "force kvm or tcg",
    }
)
def nightly(
    c,
    configs=NIGHTLY_CONFIG,
    out=None,
    rounds=5,
    confirm=3,
    baseline=None,
    baseline_rev=None,
    tiers="unit,netns,vm",
    floors=NOISE_FLOORS,
    history="history/nightly.csv",
    allow_different=False,
    accel=None,
):
    """The nightly run: test tiers, benchmarks in interleaved rounds, comparison with a
    baseline, confirming rerun; writes results.json, junit.xml, report.html, summary.md.

    Exit status: 0 nothing regressed, 1 a confirmed regression (or a failed test), 2 an
    infrastructure fault (a lab that never came up, a guest lost mid-run).
    """
    from host.lab import terminate_on_sigterm
    from host.nightly.paired import RevisionError, resolve
    from host.nightly.run import TIERS, Plan, run

    if baseline and baseline_rev:
        raise Exit("--baseline and --baseline-rev: give one baseline, not both", code=2)
    try:
        base_commit = resolve(baseline_rev) if baseline_rev else None
    except RevisionError as err:
        raise Exit(str(err), code=2) from None
    for name, value in (("rounds", rounds), ("confirm", confirm)):
        if not str(value).isdigit():
            raise Exit(f"--{name} must be a whole number, not {value!r}", code=2)
    if int(rounds) < 1:
        raise Exit("--rounds must be at least 1", code=2)
    chosen = [] if tiers in ("none", "") else tiers.split(",")
    if unknown := [t for t in chosen if t not in TIERS]:
        raise Exit(f"--tiers: no tier {', '.join(unknown)} (tiers: {', '.join(TIERS)})", code=2)
    plan = Plan(
        configs=[_load(path) for path in configs.split(",")],
        out=Path(out or f"results/nightly-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"),
        rounds=int(rounds),
        confirm_rounds=int(confirm),
        tiers=chosen,
        baseline=_result_sets(baseline, "--baseline") if baseline else None,
        baseline_path=Path(baseline) if baseline else None,
        floors=_floors(floors),
        history=None if history in (None, "none", "") else Path(history),
        allow_different=allow_different,
        accel=accel,
        baseline_rev=base_commit,
    )
    _check_injection()
    terminate_on_sigterm()
    outcome = run(plan, _say)
    console.print(Path(plan.out / "summary.md").read_text(), highlight=False, markup=False)
    if outcome.status:
        raise Exit(f"nightly: {outcome.status_text}", code=outcome.status)


@task(
    help={
        "floors": f"noise floors file (default {NOISE_FLOORS})",
        "out": "HTML page to write (default: none)",
        "allow_different": "compare even if the fingerprints differ (named in the output)",
        "calibrate": "A and B are runs of one commit: print the noise floors they imply",
    }
)
def compare(c, a, b=None, floors=NOISE_FLOORS, out=None, allow_different=False, calibrate=False):
    """Compare two result sets (bench result files or nightly results.json) with the
    nightly's statistics: a table, and an HTML page with --out. Exit 1 if B regressed.

    With A alone, a nightly results.json made with --baseline-rev: its two arms, paired
    round by round (with --calibrate, of one commit: what the A/A night flagged and how far
    each estimate strayed)."""
    from host.nightly.fingerprint import Incomparable
    from host.nightly.outcome import Outcome, compare_sets, load_same_night
    from host.nightly.pages import html, markdown
    from host.nightly.stats import calibrate as floors_from

    if b is None:
        try:
            base, cand = load_same_night(Path(a))
        except ValueError as err:
            raise Exit(f"A: {err} (or give B)", code=2) from None
    else:
        base, cand = _result_sets(a, "A"), _result_sets(b, "B")
    try:
        comparisons, diffs = compare_sets(
            base, cand, _floors(floors), allow_different, paired=b is None
        )
    except Incomparable as err:
        raise Exit(str(err), code=2) from None
    outcome = Outcome(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        candidate=cand,
        baseline=base,
        comparisons=comparisons,
        differences=diffs,
        baseline_rev=(base[0]["metadata"].get("git_commit") or "?") if b is None and base else None,
    )
    console.print(markdown(outcome, out or "(no page: --out)"), highlight=False, markup=False)
    if out:
        pair = f"{Path(a).name} -> {Path(b).name}" if b else f"{Path(a).name}, its two arms"
        Path(out).write_text(html(outcome, title=f"compare {pair}"))
        _say(f"page: {out}")
    if calibrate and b is None:
        # Paired, the noise is in each interval already: what an A/A night shows is whether
        # the floors of the -paired sections raise an alarm, and how far the estimates strayed.
        strayed = floors_from([comparisons], margin=1.0)
        _say(f"A/A, paired: {len(outcome.regressions)} gated metric(s) flagged; largest")
        _say(f"  |ratio-1| per figure (not floors: the t-interval carries the noise): {strayed}")
    elif calibrate:
        implied = floors_from([comparisons])
        _say(f"noise floors implied by this A/A pair (max |ratio-1| x 1.25): {implied}")
    if outcome.regressions:
        raise Exit(f"{len(outcome.regressions)} metric(s) regressed", code=1)


@task(
    help={
        "store": "CSV history store (default history/nightly.csv)",
        "out": "folder for the plots (default results/history)",
        "fingerprint": "only this fingerprint (default: the newest night's)",
    }
)
def history(c, store="history/nightly.csv", out="results/history", fingerprint=None):
    """Plot each metric over the nights and flag change points (ruptures)."""
    from host.nightly import history as store_

    try:
        rows = store_.load(Path(store))
    except (OSError, ValueError) as err:
        raise Exit(f"{store}: {err}", code=2) from None
    paths = store_.plot_history(rows, Path(out), fingerprint)
    for flagged in store_.flag(rows, fingerprint):
        _say(
            f"change point: {flagged.experiment} · {flagged.metric} at "
            f"{flagged.at.commit[:10]} ({flagged.at.created}): {flagged.before:.4g} -> "
            f"{flagged.after:.4g}"
        )
    _say(f"{len(paths)} file(s) in {out} (index.md lists them)")


# --- development ----------------------------------------------------------------------------


@task(help={"unit": "only the tests that boot no VM", "k": "pytest -k expression"})
def test(c, unit=False, k=None):
    """Run the test suite (unit tests, then tests that boot real VMs)."""
    args = [sys.executable, "-m", "pytest", "-v" if not unit else "-q"]
    if unit:
        args += ["-m", "not vm"]
    if k:
        args += ["-k", k]
    c.run(" ".join(args), pty=False, env={"PYTHONPATH": str(ROOT)})


@task
def lint(c):
    """ruff check and format check, then the layer map (CONTRIBUTING.md) with import-linter."""
    c.run(f"{sys.executable} -m ruff check . && {sys.executable} -m ruff format --check .")
    lint_imports = Path(sys.executable).with_name("lint-imports")
    c.run(f"{lint_imports} --no-cache", env={"PYTHONPATH": str(ROOT)})


ns = Collection(doctor, bench, plot, show, nightly, compare, history, test, lint)
ns.add_collection(Collection("image", build=image_build, manifest=image_manifest))
ns.add_collection(
    Collection(
        "lab",
        up=lab_up,
        status=lab_status,
        ssh=lab_ssh,
        capture=lab_capture,
        console=lab_console,
        down=lab_down,
        sweep=lab_sweep,
    )
)

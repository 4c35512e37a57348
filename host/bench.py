"""Run a lab's experiments and collect results as JSON with the metadata needed to reproduce them.

Each experiment type (host/experiments/, one module each) has a runner that drives guests over
SSH and returns measured figures; this module resolves each experiment's target, runs the
rounds, dispatches to the type's runner, and saves the results with their metadata.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from host import linkbuf
from host.capture import Bounds, Capture, CaptureError, CaptureResult
from host.config import ExperimentConfig, LabConfig, LinkConfig
from host.experiments import EXPERIMENT_TYPES, BenchError, Target
from host.forwarding import FORWARD_MODES, ForwardedRun, Middle, Side, Transit, forwarded
from host.lab import LabState, set_impairments
from host.paths import PROJECT_ROOT, results_dir
from host.report import comparisons
from host.routing import Path as RoutePath
from host.ssh import Guest, GuestError, GuestLost

BASE_PORT = 5001

#: A failed run's kinds: the testbed broke (a guest lost), or the experiment failed by itself.
INFRA, EXPERIMENT = "infrastructure", "experiment"


#: The fault-injection knob for testing regression detection (README, "Nightly runs"): every
#: user-level stack started for an experiment spins this many microseconds per received frame.
INJECT_ENV = "STACKBED_INJECT_RX_US"


#: `invoke bench --profile`: the user-level stacks run their loop under cProfile and report
#: their CPU by layer (guest/stack/cpuprofile.py); it costs them CPU, so it is recorded.
PROFILE_ENV = "STACKBED_PROFILE"


def profiling() -> bool:
    return os.environ.get(PROFILE_ENV, "") == "1"


def injected_rx_us() -> float:
    """The knob's value from the environment (0: off); a bad value is refused by name."""
    text = os.environ.get(INJECT_ENV, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100_000:
        raise BenchError(f"{INJECT_ENV}={text!r}: expected microseconds between 0 and 100000")
    return value


def path_args(
    exp: ExperimentConfig, state: LabState, node: str, link: str, gateway: str | None = None
) -> str:
    """The traffic tool's options for the experiment's path on `node`: a user-level path runs
    its own stack on the node's NIC for `link` (its hop next to the node), at the node's
    address there, with `gateway` (the neighbour on that link) when the peer is further."""
    if exp.path == "kernel":
        return "--path kernel"
    for nic in state.node(node).nics:
        if nic["link"] == link:
            args = (
                f"--path {exp.path} --iface {nic['name']} --addr {nic['address']}"
                f" --stack-device {exp.stack.device} --stack-offload {exp.stack.offload}"
                f" --stack-cc {exp.stack.cc}"
            )
            if gateway is not None:
                args += f" --stack-gateway {gateway}"
            if inject := injected_rx_us():
                args += f" --stack-inject-rx-us {inject:g}"
            if profiling():
                args += " --stack-profile"
            if exp.path == "factored":
                args += f" --stack-link {exp.stack.link}"
            return args
    raise BenchError(f"{exp.name}: node {node} has no NIC on link {link}")


def _target(
    config: LabConfig,
    state: LabState,
    guests: Callable[[str], Guest],
    exp: ExperimentConfig,
    path: RoutePath,
    port: int,
) -> Target:
    """Who talks to whom for `exp`, along its path: the server at its address on the last
    hop, each user-level end on its NIC of the hop next to it, through the neighbour there
    when the path has more than one hop and the middles forward packets. When they terminate
    the connection instead (a proxy, `ForwardMode.terminates`), each end talks to that
    neighbour itself, on its own subnet, and needs no gateway."""
    first, last = config.link(path.links[0]), config.link(path.links[-1])
    routed = path.hops > 1 and not FORWARD_MODES[exp.forward].terminates

    def gateway(link, neighbour: str) -> str | None:
        return str(link.address_of(neighbour).ip) if routed else None

    return Target(
        exp,
        guests(exp.client),
        guests(exp.server),
        str(last.address_of(exp.server).ip),
        port,
        client_path=path_args(exp, state, exp.client, first.name, gateway(first, path.nodes[1])),
        server_path=path_args(exp, state, exp.server, last.name, gateway(last, path.nodes[-2])),
    )


def _nic(state: LabState, node: str, link: str) -> str | None:
    return next((n["name"] for n in state.node(node).nics if n["link"] == link), None)


def _side(state: LabState, node: str, link: LinkConfig) -> Side:
    """`node`'s end of `link`: its address, NIC and the link's prefix length."""
    addr = link.address_of(node)
    return Side(link.name, str(addr.ip), _nic(state, node, link.name), addr.network.prefixlen)


def transit(
    config: LabConfig,
    state: LabState,
    guests: Callable[[str], Guest],
    path: RoutePath,
    target: Target,
) -> Transit:
    """The middles of `path`, in order, each with its two links and its next hop's address:
    the next middle's on the link between them, the server's for the last."""
    middles = []
    for i, node in enumerate(path.transit, start=1):
        up, down = config.link(path.links[i - 1]), config.link(path.links[i])
        nxt = path.nodes[i + 1]
        middles.append(
            Middle(
                node,
                guests(node),
                _side(state, node, up),
                _side(state, node, down),
                str(down.address_of(nxt).ip),
            )
        )
    return Transit(tuple(middles), target.server_ip, target.port)


@contextlib.contextmanager
def impaired(
    config: LabConfig, state: LabState, guests: Callable[[str], Guest], exp: ExperimentConfig
) -> Iterator[None]:
    """The experiment's `impair:` in place of the lab's on those links for the run; the
    lab's own put back afterwards, whatever happened."""
    if not exp.impair:
        yield
        return
    set_impairments(state, guests, dict(exp.impair))
    try:
        yield
    finally:
        set_impairments(state, guests, {name: config.link(name).impair for name in exp.impair})


@contextlib.contextmanager
def mtu_for_run(
    config: LabConfig,
    state: LabState,
    guests: Callable[[str], Guest],
    exp: ExperimentConfig,
    path: RoutePath,
) -> Iterator[None]:
    """The experiment's `mtu:` on both ends of every link it crosses, for the run; each
    link's own put back afterwards, whatever happened."""
    if exp.mtu is None:
        yield
        return

    def set_mtu(mtu_of: Callable[[str], int]) -> None:
        for name in path.links:
            for node in config.link(name).endpoints:
                nic = _nic(state, node, name)
                guests(node).run(f"ip link set dev {nic} mtu {mtu_of(name)}").check()

    set_mtu(lambda _name: exp.mtu)
    try:
        yield
    finally:
        set_mtu(lambda name: config.link(name).mtu)


def impairments_in_force(config: LabConfig, exp: ExperimentConfig, path: RoutePath) -> dict:
    """Each link the experiment crosses: what each of its ends sends through (netem's
    fields; empty for none), the experiment's override where it has one."""
    out = {}
    for name in path.links:
        link = config.link(name)
        impair = exp.impair.get(name, link.impair)
        out[name] = {end: impair.direction(end).given() if impair else {} for end in link.endpoints}
    return out


def link_sockets(state: LabState, links: Iterable[str]) -> list[tuple[str, int]]:
    """The host sockets that carry `links`, both ends (host.linkbuf); none for a lab brought
    up by a tree that did not record them."""
    wanted = set(links)
    out = []
    for node in state.nodes:
        for nic in node.nics:
            if nic["link"] in wanted and "udp" in nic:
                out.append(linkbuf.parse_endpoint(nic["udp"]))
    return out


def _summary(runs: list[dict]) -> dict:
    """Median of each numeric figure over the runs (rounds and repeats; one run gives the value)."""
    keys = [
        k
        for k, v in runs[0].items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "round"
    ]
    out = {}
    for k in keys:
        values = [r[k] for r in runs if r.get(k) is not None]
        out[k] = statistics.median(values) if values else None
    return out


def run_experiments(
    config: LabConfig,
    state: LabState,
    guests: Callable[[str], Guest],
    only: list[str] | None = None,
    progress: Callable[[str], None] = print,
    rounds: int = 1,
    capture_dir: Path | None = None,
    health: Callable[[], dict[str, str]] | None = None,
    first_round: int = 1,
    of_rounds: int | None = None,
) -> list[dict]:
    """Run the selected experiments `rounds` times over, in the file's order each round.

    A failed run records its error and its kind: "infrastructure" when a guest was lost
    (its SSH session broke; `health` then says, from libvirt, which nodes are gone, and
    every later run that needs one of them is not tried), "experiment" when the experiment
    itself failed (a tool's non-zero exit, a byte mismatch). The other runs go on, so that
    what completed is saved whatever happened to one node. Rounds are numbered from
    `first_round` (a confirming rerun continues a night's numbering); the progress lines
    count them out of `of_rounds` when a caller runs a night a round at a time.

    An experiment with `capture:` records every link its route crosses, for each run, into
    `capture_dir` (no capture without one): `NAME-rROUND-LINK.pcap`.

    Rounds interleave the experiments (a b c, a b c, ...) rather than repeating each in place
    (a a, b b, ...), so a slow drift of the host (another guest's page cache, thermal state,
    a noisy neighbour) falls on every experiment alike, and an experiment and its baseline
    can be compared round by round. Each run records its round.
    """
    if rounds < 1:
        raise BenchError(f"rounds must be at least 1, not {rounds}")
    selected = [e for e in config.experiments if not only or e.name in only]
    if only and (missing := set(only) - {e.name for e in selected}):
        raise BenchError(
            f"no experiment named {', '.join(sorted(missing))} in {config.source_path}"
        )
    paths = [config.path_of(exp) for exp in selected]
    targets = [
        _target(config, state, guests, exp, path, BASE_PORT + i)
        for i, (exp, path) in enumerate(zip(selected, paths, strict=True))
    ]
    transits = [
        transit(config, state, guests, path, target)
        for path, target in zip(paths, targets, strict=True)
    ]
    sockets = [link_sockets(state, path.links) for path in paths]
    runs: list[list[dict]] = [[] for _ in selected]
    lost: dict[str, str] = {}
    last = first_round + rounds - 1
    shown = of_rounds or last
    for round_no in range(first_round, last + 1):
        for i, (exp, path, target) in enumerate(zip(selected, paths, targets, strict=True)):
            mode = FORWARD_MODES[exp.forward]
            for rep in range(exp.repeat):
                if gone := [lost[n] for n in path.nodes if n in lost]:
                    runs[i].append(
                        {"error": f"not run: {gone[0]}", "error_kind": INFRA, "round": round_no}
                    )
                    continue
                progress(
                    (f"round {round_no}/{shown} " if shown > 1 else "")
                    + f"[{i + 1}/{len(selected)}] {exp.name} ({exp.type}, {exp.path}, "
                    f"{' -> '.join(path.nodes)}"
                    + (f", {exp.forward}" if path.transit else "")
                    + f", {exp.duration_s:g} s)"
                    + (f" repeat {rep + 1}/{exp.repeat}" if exp.repeat > 1 else "")
                )
                name = f"{exp.name}-r{round_no}" + (f"-{rep + 1}" if exp.repeat > 1 else "")
                captures: list[Capture] = []
                forwarding: ForwardedRun | None = None
                try:
                    with contextlib.ExitStack() as stack:
                        stack.enter_context(impaired(config, state, guests, exp))
                        stack.enter_context(mtu_for_run(config, state, guests, exp, path))
                        if exp.capture is not None and capture_dir is not None:
                            bounds = Bounds(exp.capture.max_bytes, exp.capture.snaplen)
                            for link in path.links:
                                out = capture_dir / f"{name}-{link}.pcap"
                                captures.append(
                                    stack.enter_context(Capture(state, link, out, bounds))
                                )
                        forwarding = stack.enter_context(forwarded(mode, transits[i]))
                        before = linkbuf.drops(sockets[i])
                        run = EXPERIMENT_TYPES[exp.type].run(
                            replace(target, peer_ip=forwarding.entry)
                        )
                        if sockets[i]:
                            after = linkbuf.drops(sockets[i])
                            run["link_drops"] = sum(after.get(k, n) - n for k, n in before.items())
                except (BenchError, GuestError, CaptureError) as err:
                    run = {"error": str(err), "error_kind": EXPERIMENT}
                    if health is not None:
                        newly = {n: m for n, m in health().items() if n not in lost}
                        lost |= newly
                        mine = [m for n, m in newly.items() if n in path.nodes]
                        if mine:
                            run["error"] += "; " + "; ".join(mine)
                            run["error_kind"] = INFRA
                    if isinstance(err, GuestLost):
                        run["error_kind"] = INFRA
                    progress(f"    FAILED: {run['error']}")
                else:
                    if forwarding is not None and forwarding.middles:
                        run["forward"] = forwarding.middles
                if captures:
                    run["captures"] = [_capture_record(c.result, capture_dir) for c in captures]
                runs[i].append({**run, "round": round_no})
    return [
        _record(exp, path, exp_runs, impairments_in_force(config, exp, path))
        for exp, path, exp_runs in zip(selected, paths, runs, strict=True)
    ]


def extend(records: list[dict], more: list[dict]) -> None:
    """Add a rerun's runs (`more`, records of the same experiments) to `records`, in place,
    and recompute what is derived from the runs."""
    by_name = {rec["experiment"]: rec for rec in more}
    for rec in records:
        extra = by_name.get(rec["experiment"])
        if extra is None:
            continue
        rec["runs"] += extra["runs"]
        ok = [r for r in rec["runs"] if "error" not in r]
        rec["summary"] = _summary(ok) if ok else None
        rec["errors"] = [r["error"] for r in rec["runs"] if "error" in r]
        rec["forward"]["middles"] = _middles_summary(ok)


def _capture_record(result: CaptureResult | None, capture_dir: Path | None) -> dict | None:
    """What a run's JSON says of one capture: the pcap's path beside the result file."""
    if result is None:
        return None
    where = result.path.relative_to(capture_dir.parent) if capture_dir else result.path
    return {
        "link": result.link,
        "pcap": str(where),
        "frames": result.frames,
        "bytes": result.bytes,
        "bound_reached": result.bound_reached,
    }


def _middles_summary(runs: list[dict]) -> dict:
    """Each middle's figures over the successful runs: the median of each numeric one."""
    nodes: dict[str, list[dict]] = {}
    for run in runs:
        for node, figures in (run.get("forward") or {}).items():
            nodes.setdefault(node, []).append(figures)
    return {node: _summary(figures) for node, figures in nodes.items()}


def _record(exp: ExperimentConfig, path: RoutePath, runs: list[dict], impairments: dict) -> dict:
    ok = [r for r in runs if "error" not in r]
    return {
        "experiment": exp.name,
        "type": exp.type,
        "path": exp.path,
        "stack": None if exp.path in ("kernel", "floor") else exp.stack.model_dump(),
        "client": exp.client,
        "server": exp.server,
        "link": exp.link,
        # The hops from client to server (host.routing): one for nodes joined by a link.
        "route": path.as_dict(),
        # What the middle nodes did (host.forwarding): the mode, and per middle the medians
        # of its figures over the successful runs (each run holds its own, in full).
        "forward": {"mode": exp.forward, "middles": _middles_summary(ok)},
        # netem on each link crossed, per sending end, as it was for these runs.
        "impairments": impairments,
        "duration_s": exp.duration_s,
        # The links' MTU for these runs when the experiment set its own (else theirs).
        "mtu": exp.mtu,
        # The sweep this experiment is a point of (host.parameter_sweeps), if any.
        "sweep": exp.sweep_point,
        "baseline": exp.baseline,
        "runs": runs,
        "summary": _summary(ok) if ok else None,
        "errors": [r["error"] for r in runs if "error" in r],
    }


def git_output(*args: str) -> str | None:
    """What `git ARGS` prints in this checkout, stripped; None if git fails or is missing."""
    try:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str | None:
    """The host CPU's model name, as /proc/cpuinfo gives it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def placement(state: LabState) -> str:
    """Each node's vCPUs and where they run: 'a=1@0 b=1@1', or 'a=1 b=1 unpinned' when
    every node floats over the host's CPUs (the form results had before pinning existed)."""
    if all(n.cpuset is None for n in state.nodes):
        return " ".join(f"{n.name}={n.vcpus}" for n in state.nodes) + " unpinned"
    return " ".join(f"{n.name}={n.vcpus}@{n.cpuset or 'any'}" for n in state.nodes)


def source_revision() -> dict:
    """The tree's commit and whether it has uncommitted changes, taken when its guest code is
    deployed: a commit made while the rounds run did not run."""
    return {
        "git_commit": git_output("rev-parse", "HEAD"),
        "git_dirty": bool(git_output("status", "--porcelain")),
    }


def metadata(
    config: LabConfig,
    state: LabState,
    image_manifest: dict,
    rounds: int = 1,
    revision: dict | None = None,
) -> dict:
    """What a result set was measured with; `revision` is `source_revision()` as it was at
    deployment (now, if not given)."""
    import libvirt

    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    lv = libvirt.getVersion()
    return {
        "tool": "stackbed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(revision or source_revision()),
        "accel": state.accel,
        # The links' host socket buffers (host.linkbuf): None means the host's default, with
        # which a TCG guest's links drop frames under load.
        "link_rcvbuf": state.link_rcvbuf,
        "host": {
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpu_model": cpu_model(),
            "cpus": len(Path("/proc/cpuinfo").read_text().split("processor\t")) - 1,
            "python": platform.python_version(),
            "qemu": qemu.stdout.splitlines()[0] if qemu.stdout else None,
            "libvirt": f"{lv // 1000000}.{lv // 1000 % 1000}.{lv % 1000}",
        },
        "image": {
            # The lab records what it booted; the manifest (if still cached) adds versions.
            "name": state.image,
            "digest": state.image_digest,
            "kernel_version": image_manifest.get("kernel_version"),
            "python_version": image_manifest.get("python_version"),
        },
        "guest_kernel": state.guest_kernel,
        # Where the guests' vCPUs run: part of what makes two runs' figures comparable.
        "placement": placement(state),
        "lab": state.lab,
        "rounds": rounds,
        # Set only when a user asked for it: the figures of such a run are slowed on purpose.
        "fault_injection": {"rx_us": rx_us} if (rx_us := injected_rx_us()) else None,
        "profiled": profiling(),
        "boot_seconds": {n.name: n.boot_seconds for n in state.nodes},
        "config": config.to_dict(),
    }


def result_stem(lab: str, out_dir: Path | None = None) -> Path:
    """Where a run's results go, without the suffix: `results/STAMP-LAB`. Chosen when the run
    starts, so that its captures (`STAMP-LAB.captures/`) sit next to its JSON."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return (out_dir or results_dir()) / f"{stamp}-{lab}"


def save_results(
    meta: dict, records: list[dict], out_dir: Path | None = None, stem: Path | None = None
) -> Path:
    stem = stem or result_stem(meta["lab"], out_dir)
    out_dir = stem.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    path = stem.with_name(stem.name + ".json")
    data = {"metadata": meta, "results": records, "comparisons": comparisons(records)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    latest = out_dir / "latest.json"
    latest.unlink(missing_ok=True)
    latest.symlink_to(path.name)
    return path

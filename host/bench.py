"""Run a lab's experiments and collect results as JSON with the metadata needed to reproduce them.

Each experiment type is one function that drives guests over SSH and returns measured figures:
- `stream`: the traffic tool's source->sink for `duration_s` with hashing off (sha256 in software
  under TCG costs more CPU than the stack being measured), then a shorter sha256-checked
  transfer through the same path: a stream result without a matching checksum is a failure;
- `rr`: request/response transactions, latency percentiles from the client;
- `iperf3`: the reference tool on the same link, for comparison with the traffic tool;
- `ping`: ICMP round trips through the kernel.
Guest CPU comes from the traffic tool (/proc/stat in the guest); host CPU is sampled here, because
every figure on a TCG host is bound by the host's cores.
"""

from __future__ import annotations

import json
import platform
import re
import shlex
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guest.stack.factored.boundaries import BOUNDARIES
from host.config import ExperimentConfig, LabConfig
from host.lab import LabState
from host.paths import PROJECT_ROOT, results_dir
from host.report import comparisons
from host.ssh import Guest, GuestError, traffic_command

INTEGRITY_BYTES = 8 * 1024 * 1024
BASE_PORT = 5001


class BenchError(RuntimeError):
    pass


@dataclass
class Target:
    """Everything an experiment needs: who talks to whom, at which address."""

    exp: ExperimentConfig
    client: Guest
    server: Guest
    server_ip: str
    port: int
    client_path: str = "--path kernel"  # the traffic tool's path options on each side
    server_path: str = "--path kernel"


def path_args(exp: ExperimentConfig, state: LabState, node: str) -> str:
    """The traffic tool's options for the experiment's path on `node`: a user-level path runs
    its own stack on the node's NIC for this link, at the node's address there."""
    if exp.path == "kernel":
        return "--path kernel"
    for nic in state.node(node).nics:
        if nic["link"] == exp.link:
            args = (
                f"--path {exp.path} --iface {nic['name']} --addr {nic['address']}"
                f" --stack-device {exp.stack.device} --stack-offload {exp.stack.offload}"
            )
            if exp.path == "factored":
                args += f" --stack-link {exp.stack.link}"
            return args
    raise BenchError(f"{exp.name}: node {node} has no NIC on link {exp.link}")


def host_cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all host CPUs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def host_cpu_since(start: tuple[int, int]) -> float | None:
    busy, total = host_cpu_times()
    return round((busy - start[0]) / (total - start[1]), 3) if total > start[1] else None


def _json_line(result, what: str) -> dict:
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("{"):
            data = json.loads(line)
            if "error" in data:
                raise BenchError(f"{what}: {data['error']}")
            return data
    raise BenchError(
        f"{what} printed no result (exit {result.exit_status}): {result.stderr.strip()[-500:]}"
    )


def _pair(
    t: Target,
    server_args: str,
    client_args: str,
    server_role: str,
    client_role: str,
    timeout: float,
) -> tuple[dict, dict]:
    """Start the server, run the client to completion, collect both JSON lines."""
    srv = t.server.start(
        traffic_command(
            server_role, f"{t.server_path} --bind {t.server_ip} --port {t.port} {server_args}"
        )
    )
    try:
        cli = t.client.run(
            traffic_command(
                client_role, f"{t.client_path} --peer {t.server_ip} --port {t.port} {client_args}"
            ),
            timeout=timeout,
        )
    finally:
        srv_result = srv.wait(timeout=60)
    return _json_line(cli, f"{client_role} on {t.client.name}"), _json_line(
        srv_result, f"{server_role} on {t.server.name}"
    )


def run_stream(t: Target) -> dict:
    e = t.exp
    common = f"--timeout 30 --label {shlex.quote(e.name)}"
    cpu0 = host_cpu_times()
    cli, srv = _pair(
        t,
        f"{common} --msg-size {e.msg_size} --no-hash",
        f"{common} --msg-size {e.msg_size} --no-hash --duration {e.duration_s}",
        "sink",
        "source",
        timeout=e.duration_s + 90,
    )
    host_cpu = host_cpu_since(cpu0)
    if cli["bytes"] != srv["bytes"]:
        raise BenchError(f"{e.name}: source sent {cli['bytes']} bytes, sink got {srv['bytes']}")
    icli, isrv = _pair(
        t,
        f"{common} --msg-size {e.msg_size}",
        f"{common} --msg-size {e.msg_size} --bytes {INTEGRITY_BYTES}",
        "sink",
        "source",
        timeout=180,
    )
    integrity = {
        "bytes": isrv["bytes"],
        "sha256_source": icli["sha256"],
        "sha256_sink": isrv["sha256"],
        "match": icli["sha256"] == isrv["sha256"] and isrv["bytes"] == INTEGRITY_BYTES,
    }
    if not integrity["match"]:
        raise BenchError(f"{e.name}: byte stream corrupted: {integrity}")
    return {
        "mbit_per_s": srv["mbit_per_s"],
        "bytes": srv["bytes"],
        "seconds": srv["seconds"],
        "client_cpu": cli["cpu_system"],
        "server_cpu": srv["cpu_system"],
        "host_cpu": host_cpu,
        "integrity": integrity,
        "stack": (stack := stack_summary(cli, srv)),
        "retransmits": _retransmits(stack),
        "raw": {"client": cli, "server": srv},
    }


def _retransmits(stack: dict | None) -> int | None:
    """Both user-level stacks' retransmitted segments (None on the kernel path)."""
    return sum(side["retransmits"] for side in stack.values()) if stack else None


def stack_summary(client: dict, server: dict) -> dict | None:
    """What the user-level stacks of a run said about themselves on exit (None on the
    kernel path): the levers in force, how much TSO and GRO merged, and the retransmissions
    of each side, which show whether the link or the receiver dropped frames."""
    stacks = {side: rec.get("stack") for side, rec in (("client", client), ("server", server))}
    if not any(stacks.values()):
        return None
    out: dict = {}
    for side, st in stacks.items():
        if not st:
            continue
        tcp = st.get("stack", {})
        nic = st.get("nic", {})
        dev = st.get("device", {})
        out[side] = {
            "offloads": nic.get("offloads"),
            "retransmits": tcp.get("tcp.retransmits_fast", 0)
            + tcp.get("tcp.retransmits_timeout", 0),
            "timeouts": tcp.get("tcp.timeouts", 0),
            "segments_out": tcp.get("tcp.segments_out", 0),
            "tx_frames": dev.get("tx_frames", 0),
            "rx_frames": dev.get("rx_frames", 0),
            "tx_tso_frames": nic.get("tx_tso_frames", 0),
            "rx_gro_frames": nic.get("rx_gro_frames", 0),
            "rx_dropped": dev.get("rx_dropped", 0),
            "drops": tcp.get("drops_total", 0),
        }
        link = st.get("link") or {}
        boundary = BOUNDARIES.get(link.get("mode", ""))
        if boundary is not None and boundary.over_kernel_rings:
            # How the factored stack's transmits crossed: wakeups of the driver domain (rung
            # by the protocol domain), or submissions on the send-only io_uring (no wakeup).
            driver, ring = link.get("driver") or {}, link.get("transmit") or {}
            out[side]["crossings"] = {
                "mode": link["mode"],
                "tx_batches": dev.get("tx_batches", 0),
                "driver_wakeups": driver.get("wakeups", 0),
                "uring_submits": ring.get("submits", 0),
                "errors": driver.get("errors", 0) + ring.get("errors", 0),
            }
    return out


def run_rr(t: Target) -> dict:
    e = t.exp
    common = (
        f"--timeout 30 --label {shlex.quote(e.name)} "
        f"--req-size {e.req_size} --resp-size {e.resp_size}"
    )
    cpu0 = host_cpu_times()
    cli, srv = _pair(
        t,
        common,
        f"{common} --duration {e.duration_s}",
        "rr-server",
        "rr-client",
        timeout=e.duration_s + 90,
    )
    lat = cli["latency_us"]
    return {
        "transactions_per_s": cli["transactions_per_s"],
        "transactions": cli["transactions"],
        "p50_us": lat["p50"],
        "p99_us": lat["p99"],
        "mean_us": lat["mean"],
        "client_cpu": cli["cpu_system"],
        "server_cpu": srv["cpu_system"],
        "host_cpu": host_cpu_since(cpu0),
        "stack": (stack := stack_summary(cli, srv)),
        "retransmits": _retransmits(stack),
        "raw": {"client": cli, "server": srv},
    }


def wait_listening(guest: Guest, port: int, timeout: float = 30.0) -> None:
    """Wait inside the guest until something listens on TCP `port` (one SSH round trip)."""
    tries = int(timeout / 0.1)
    r = guest.run(
        f'for i in $(seq {tries}); do ss -Hltn "sport = :{port}" | grep -q . && exit 0; '
        f"sleep 0.1; done; exit 1",
        timeout=timeout + 30,
    )
    if r.exit_status != 0:
        raise BenchError(f"{guest.name}: nothing listens on port {port} after {timeout:.0f} s")


def run_iperf3(t: Target) -> dict:
    e = t.exp
    seconds = max(1, round(e.duration_s))
    # `timeout` bounds the server even if no client ever reaches it.
    srv = t.server.start(
        f"exec timeout {seconds + 90} iperf3 -s -1 -J -B {t.server_ip} -p {t.port}"
    )
    wait_listening(t.server, t.port)
    cpu0 = host_cpu_times()
    cli = t.client.run(
        f"iperf3 -c {t.server_ip} -p {t.port} -t {seconds} -J", timeout=e.duration_s + 60
    )
    host_cpu = host_cpu_since(cpu0)
    if cli.exit_status != 0:
        t.server.run(f"pkill -f 'iperf3 -s -1 -J -B {t.server_ip} -p {t.port}'")
        srv.wait(timeout=30)
        raise BenchError(
            f"iperf3 client failed (exit {cli.exit_status}): "
            f"{(cli.stdout + cli.stderr).strip()[-400:]}"
        )
    srv_result = srv.wait(timeout=60)
    data = json.loads(cli.stdout)
    end = data["end"]
    return {
        "mbit_per_s": end["sum_received"]["bits_per_second"] / 1e6,
        "client_cpu": end["cpu_utilization_percent"]["host_total"] / 100,
        "server_cpu": end["cpu_utilization_percent"]["remote_total"] / 100,
        "host_cpu": host_cpu,
        "retransmits": end["sum_sent"].get("retransmits"),
        "raw": {"server_exit": srv_result.exit_status},
    }


def run_ping(t: Target) -> dict:
    e = t.exp
    count = max(3, int(e.duration_s / 0.2))
    r = t.client.run(f"ping -q -c {count} -i 0.2 {t.server_ip}", timeout=e.duration_s + 30)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", r.stdout)
    loss = re.search(r"([\d.]+)% packet loss", r.stdout)
    if r.exit_status != 0 or not m:
        raise BenchError(f"ping {t.server_ip} from {t.client.name} failed: {r.stdout[-300:]}")
    return {
        "rtt_min_us": float(m.group(1)) * 1000,
        "rtt_avg_us": float(m.group(2)) * 1000,
        "rtt_max_us": float(m.group(3)) * 1000,
        "p50_us": None,
        "loss_percent": float(loss.group(1)) if loss else None,
        "count": count,
    }


RUNNERS: dict[str, Callable[[Target], dict]] = {
    "stream": run_stream,
    "rr": run_rr,
    "iperf3": run_iperf3,
    "ping": run_ping,
}


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
) -> list[dict]:
    """Run the selected experiments `rounds` times over, in the file's order each round.

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
    targets = []
    for i, exp in enumerate(selected):
        link = config.link(exp.link)
        targets.append(
            Target(
                exp,
                guests(exp.client),
                guests(exp.server),
                str(link.address_of(exp.server).ip),
                BASE_PORT + i,
                client_path=path_args(exp, state, exp.client),
                server_path=path_args(exp, state, exp.server),
            )
        )
    runs: list[list[dict]] = [[] for _ in selected]
    for round_no in range(1, rounds + 1):
        for i, (exp, target) in enumerate(zip(selected, targets, strict=True)):
            for rep in range(exp.repeat):
                progress(
                    (f"round {round_no}/{rounds} " if rounds > 1 else "")
                    + f"[{i + 1}/{len(selected)}] {exp.name} ({exp.type}, {exp.path}, "
                    f"{exp.client} -> {exp.server}, {exp.duration_s:g} s)"
                    + (f" repeat {rep + 1}/{exp.repeat}" if exp.repeat > 1 else "")
                )
                try:
                    run = RUNNERS[exp.type](target)
                except (BenchError, GuestError) as err:
                    run = {"error": str(err)}
                    progress(f"    FAILED: {err}")
                runs[i].append({**run, "round": round_no})
    return [_record(exp, exp_runs) for exp, exp_runs in zip(selected, runs, strict=True)]


def _record(exp: ExperimentConfig, runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    return {
        "experiment": exp.name,
        "type": exp.type,
        "path": exp.path,
        "stack": None if exp.path == "kernel" else exp.stack.model_dump(),
        "client": exp.client,
        "server": exp.server,
        "link": exp.link,
        "duration_s": exp.duration_s,
        "baseline": exp.baseline,
        "runs": runs,
        "summary": _summary(ok) if ok else None,
        "errors": [r["error"] for r in runs if "error" in r],
    }


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def metadata(config: LabConfig, state: LabState, image_manifest: dict, rounds: int = 1) -> dict:
    import libvirt

    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    lv = libvirt.getVersion()
    return {
        "tool": "stackbed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "accel": state.accel,
        "host": {
            "kernel": platform.release(),
            "machine": platform.machine(),
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
        "lab": state.lab,
        "rounds": rounds,
        "boot_seconds": {n.name: n.boot_seconds for n in state.nodes},
        "config": config.to_dict(),
    }


def save_results(meta: dict, records: list[dict], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"{stamp}-{meta['lab']}.json"
    data = {"metadata": meta, "results": records, "comparisons": comparisons(records)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    latest = out_dir / "latest.json"
    latest.unlink(missing_ok=True)
    latest.symlink_to(path.name)
    return path

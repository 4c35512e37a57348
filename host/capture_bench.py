"""What capturing a link costs: the kernel stream's throughput with and without a capture.

    python3 -m host.capture_bench [--config F] [--link L] [--rounds 3] [--seconds 10]

Uses the lab if it is up (`invoke lab.up`), else brings one up and down. Each round runs the
stream once without and once with a capture of the link (`host.capture`), alternating which
goes first (ABBA), so a slow drift of the host falls on both alike; each round's ratio is that
round's pair. Prints one JSON object, then a table. A benchmark, not a test: under TCG the
figures are bound by the host's cores, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from host.capture import DEFAULT_SNAPLEN, Bounds, Capture, CaptureError, link_end
from host.experiments.base import Target
from host.experiments.measure import traffic_pair
from host.lab import Lab, LabState

PORT = 5901
BENCH_SNAPLEN = 128  # headers only: the figure is the cost of the mechanism, not of the disk
BENCH_MAX_BYTES = 1 << 30


def qemu_cpu_seconds(domain: str) -> float:
    """CPU time (user + system) of a running domain's QEMU process so far."""
    pid = Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream(target: Target, seconds: float, domain: str) -> tuple[float, float]:
    """One kernel-path stream of `seconds`, hashing off: the sink's Mbit/s, and the CPU time
    the capturing endpoint's QEMU spent per MB carried (ms)."""
    common = "--timeout 30 --msg-size 65536 --no-hash"
    cpu0 = qemu_cpu_seconds(domain)
    _cli, srv = traffic_pair(
        target, common, f"{common} --duration {seconds}", "sink", "source", seconds + 90
    )
    cpu_ms = (qemu_cpu_seconds(domain) - cpu0) * 1000
    return srv["mbit_per_s"], cpu_ms / max(srv["bytes"] / 1e6, 1e-9)


def run_rounds(
    state: LabState,
    target: Target,
    link: str,
    rounds: int,
    seconds: float,
    bounds: Bounds,
    folder: Path,
    progress=print,
) -> list[dict]:
    out = []
    domain = link_end(state, link).domain
    for r in range(1, rounds + 1):
        order = ("plain", "capture") if r % 2 else ("capture", "plain")
        row: dict = {"round": r, "order": list(order)}
        for kind in order:
            if kind == "plain":
                row["plain_mbit_per_s"], row["plain_qemu_cpu_ms_per_mb"] = stream(
                    target, seconds, domain
                )
            else:
                pcap = folder / f"round{r}.pcap"
                with Capture(state, link, pcap, bounds) as cap:
                    row["capture_mbit_per_s"], row["capture_qemu_cpu_ms_per_mb"] = stream(
                        target, seconds, domain
                    )
                res = cap.result
                row.update(frames=res.frames, pcap_bytes=res.bytes, bound_reached=res.bound_reached)
                pcap.unlink(missing_ok=True)
            progress(f"round {r}/{rounds}: {kind} done")
        row["ratio"] = row["capture_mbit_per_s"] / row["plain_mbit_per_s"]
        out.append(row)
    return out


def summary(rows: list[dict]) -> dict:
    ratios = [r["ratio"] for r in rows]
    med = statistics.median(ratios)
    return {
        "plain_mbit_per_s": statistics.median(r["plain_mbit_per_s"] for r in rows),
        "capture_mbit_per_s": statistics.median(r["capture_mbit_per_s"] for r in rows),
        "plain_qemu_cpu_ms_per_mb": statistics.median(r["plain_qemu_cpu_ms_per_mb"] for r in rows),
        "capture_qemu_cpu_ms_per_mb": statistics.median(
            r["capture_qemu_cpu_ms_per_mb"] for r in rows
        ),
        "ratio_median": med,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "cost_percent": (1 - med) * 100,
    }


def _table(rows: list[dict], summ: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kernel stream with and without link capture", title_justify="left")
    cols = ("round", "plain Mbit/s", "capture Mbit/s", "ratio", "QEMU ms/MB plain", "capture")
    for col in (*cols, "frames", "pcap MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["round"]),
            f"{r['plain_mbit_per_s']:.0f}",
            f"{r['capture_mbit_per_s']:.0f}",
            f"{r['ratio']:.3f}",
            f"{r['plain_qemu_cpu_ms_per_mb']:.1f}",
            f"{r['capture_qemu_cpu_ms_per_mb']:.1f}",
            str(r["frames"]),
            f"{r['pcap_bytes'] / 1e6:.1f}" + (" (bound)" if r["bound_reached"] else ""),
        )
    table.add_row(
        "median",
        f"{summ['plain_mbit_per_s']:.0f}",
        f"{summ['capture_mbit_per_s']:.0f}",
        f"{summ['ratio_median']:.3f} ({summ['ratio_min']:.3f}-{summ['ratio_max']:.3f})",
        f"{summ['plain_qemu_cpu_ms_per_mb']:.1f}",
        f"{summ['capture_qemu_cpu_ms_per_mb']:.1f}",
        "",
        "",
    )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main(argv: list[str] | None = None) -> int:
    from host.accel import accel_for
    from host.config import load_lab
    from host.lab import terminate_on_sigterm

    p = argparse.ArgumentParser(prog="python3 -m host.capture_bench", description=__doc__)
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--name", help="lab name (default: the config's)")
    p.add_argument("--link", help="default: the lab's first link")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--snaplen", type=int, default=BENCH_SNAPLEN, help=f"whole: {DEFAULT_SNAPLEN}")
    p.add_argument("--max-bytes", type=int, default=BENCH_MAX_BYTES)
    p.add_argument("--accel", choices=("kvm", "tcg"))
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds must be at least 1 and --seconds positive")
    try:
        bounds = Bounds(args.max_bytes, args.snaplen)
    except CaptureError as e:
        p.error(str(e))
    cfg = load_lab(args.config)
    link = cfg.link(args.link) if args.link else cfg.links[0]
    client, server = link.endpoints
    terminate_on_sigterm()

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)  # stdout carries the JSON

    def measure(state: LabState, guest) -> dict:
        target = Target(
            SimpleNamespace(name="capture-bench", duration_s=args.seconds),
            guest(client),
            guest(server),
            str(link.address_of(server).ip),
            PORT,
        )
        with tempfile.TemporaryDirectory(prefix="stackbed-capture-bench-") as folder:
            rows = run_rounds(
                state,
                target,
                link.name,
                args.rounds,
                args.seconds,
                bounds,
                Path(folder),
                progress=say,
            )
        return {
            "accel": state.accel,
            "lab": state.lab,
            "link": link.name,
            "client": client,
            "server": server,
            "seconds": args.seconds,
            "snaplen": args.snaplen,
            "max_bytes": args.max_bytes,
            "rounds": rows,
            "summary": summary(rows),
        }

    name = args.name or cfg.lab
    running = LabState.load(name)
    if running is not None and running.owner_alive():
        say(f"using running lab {name} (owner pid {running.owner_pid})")
        guests = {n.name: running.guest(n.name) for n in running.nodes}
        try:
            result = measure(running, guests.__getitem__)
        finally:
            for g in guests.values():
                g.close()
    else:
        accel = accel_for(cfg.image, args.accel, progress=say)
        with Lab(cfg, accel=accel, name=name, progress=say) as lab:
            result = measure(lab.up(), lab.guest)
    print(json.dumps(result, indent=2))
    _table(result["rounds"], result["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

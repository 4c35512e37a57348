"""Frames/s and CPU per frame of the user-level devices: plain packet socket vs PACKET_MMAP.

    python3 -m guest.bench.device [--seconds 3] [--size 1514] [--modes ...]

Self-contained: creates two network namespaces joined by a veth pair (`guest.testing.netns`,
names prefixed `sbdev`), runs a receiver (`probe recv`) in one and a sender (`probe send`,
timed) in the other, both with the same device kind, and prints both ends' rates and CPU
seconds per frame; the namespaces are deleted afterwards whatever happens. Frames are valid
Ethernet frames to the receiver's MAC with the local experimental ethertype 0x88B5.

Reading the numbers: "CPU us/fr" per end is the process's own user+system time (getrusage).
On a veth the kernel's receive path (veth -> netif_rx -> the receiver's socket or ring) runs
in the *sender's* softirq, and with IRQ time accounting (Debian's kernels) softirq time is
charged to no process at all, so the per-process figures leave it out. The "host" table adds
it back: busy time of all CPUs (/proc/stat) during the run per frame delivered, the whole
cost of moving a frame from one Python process to the other, plus whatever else the host
did meanwhile. The sender is not paced: if the receiver is slower, the difference shows as
kernel drops (socket buffer or ring full), which is the point: it is the receive rate that
bounds a stack. Compare modes within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from guest.testing.netns import VethPair, ns_cmd, unavailable_reason, veth_pair
from guest.traffic.metrics import read_proc_stat

ROOT = Path(__file__).resolve().parents[2]

#: mode name -> probe options selecting the device.
MODES: dict[str, list[str]] = {
    "packet": ["--kind", "packet"],
    "ring-v3": ["--kind", "ring", "--version", "3"],
    "ring-v2": ["--kind", "ring", "--version", "2"],
    "packet-bypass": ["--kind", "packet", "--qdisc-bypass"],
    "ring-v3-bypass": ["--kind", "ring", "--version", "3", "--qdisc-bypass"],
}


def _probe(ns: str, args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = ns_cmd(ns, [sys.executable, "-m", "guest.tools.probe", *args])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe failed (exit {proc.returncode}): {out.strip()[-500:]}")
    return json.loads(lines[-1])


def run_mode(pair: VethPair, mode: str, seconds: float, size: int, batch: int) -> dict[str, Any]:
    """One timed run: receiver in ns_b, sender in ns_a, same device kind at both ends."""
    opts = MODES[mode]
    common = [*opts, "--batch", str(batch), "--no-digest", "--no-check"]
    recv = _probe(
        pair.ns_b,
        ["recv", "--iface", pair.if_b, *common, "--timeout", str(seconds + 10), "--idle", "1"],
    )
    send = None
    try:
        assert recv.stdout is not None
        ready, _, _ = select.select([recv.stdout], [], [], 10)
        if not ready or recv.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{mode}: receiver did not come up")
        timed = ["--seconds", str(seconds), "--size", str(size)]
        busy0 = read_proc_stat()
        send = _probe(
            pair.ns_a, ["send", "--iface", pair.if_a, "--dst", pair.mac_b, *common, *timed]
        )
        sent = _result(send, seconds + 30)
        received = _result(recv, 30)
        busy1 = read_proc_stat()
    finally:
        for proc in (send, recv):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    host_busy_s = None
    if busy0 is not None and busy1 is not None:
        host_busy_s = (busy1[0] - busy0[0]) / os.sysconf("SC_CLK_TCK")
    return {"mode": mode, "size": size, "send": sent, "recv": received, "host_busy_s": host_busy_s}


def _side(r: dict[str, Any], size: int) -> tuple[float, float, float]:
    """frames/s, Mbit/s, CPU microseconds per frame."""
    frames = r["frames"]
    rate = frames / r["active_s"] if r["active_s"] > 0 else 0.0
    cpu_us = r["cpu_s"] / frames * 1e6 if frames else float("nan")
    return rate, rate * size * 8 / 1e6, cpu_us


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'mode':15s} {'side':4s} {'frames':>9s} {'frames/s':>10s} {'Mbit/s':>8s} "
        f"{'CPU us/fr':>9s} {'CPU s':>6s} {'drops':>7s}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        for side in ("send", "recv"):
            r = row[side]
            rate, mbit, cpu_us = _side(r, row["size"])
            stats = r["stats"]
            drops = stats["rx_dropped"] if side == "recv" else stats["tx_full"]
            print(
                f"{row['mode']:15s} {side:4s} {r['frames']:9d} {rate:10,.0f} {mbit:8.1f} "
                f"{cpu_us:9.2f} {r['cpu_s']:6.2f} {drops:7d}"
            )
    print("drops: recv = frames the kernel dropped (receiver too slow); send = send() refusals")
    print()
    print(
        f"{'mode':15s} {'delivered/s':>11s} {'loss %':>7s} {'host CPU s':>10s} {'host us/fr':>10s}"
    )
    for row in rows:
        sent, got = row["send"]["frames"], row["recv"]["frames"]
        rate, _, _ = _side(row["recv"], row["size"])
        loss = 100 * (sent - got) / sent if sent else 0.0
        busy = row["host_busy_s"]
        per = f"{busy / got * 1e6:10.2f}" if busy is not None and got else f"{'n/a':>10s}"
        busy_s = f"{busy:10.2f}" if busy is not None else f"{'n/a':>10s}"
        print(f"{row['mode']:15s} {rate:11,.0f} {loss:7.2f} {busy_s} {per}")
    print("host: busy time of all CPUs during the run (both ends, softirq included) per frame")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="sending time per mode")
    parser.add_argument("--size", type=int, default=1514, help="frame length in bytes")
    parser.add_argument("--batch", type=int, default=64, help="frames per send/recv batch")
    parser.add_argument(
        "--modes", default="packet,ring-v3,ring-v2", help=f"comma-separated: {', '.join(MODES)}"
    )
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes: {', '.join(unknown)}")
    reason = unavailable_reason()
    if reason:
        print(f"bench_device: {reason}", file=sys.stderr)
        return 2
    rows = []
    with veth_pair() as pair:
        for mode in modes:
            rows.append(run_mode(pair, mode, args.seconds, args.size, args.batch))
            time.sleep(0.2)  # let the receiver's namespace settle between modes
    print(
        f"{args.size}-byte frames over a veth pair, {args.seconds:g} s per mode, batch {args.batch}"
    )
    print_table(rows)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

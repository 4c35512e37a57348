"""Our monolithic stack against the kernel on a veth pair: `python3 -m guest.bench.veth`.

The VM bench measures the paths under emulation; this one measures them natively, on the host
(or inside a guest), between two network namespaces joined by a veth pair, with the very same
traffic tool: the kernel path (Linux at both ends), the floor (the traffic tool moving raw
frames through a packet ring itself, `guest/traffic/floor.py`), then our stack at both ends
with every offload lever on and with none. Stream throughput (with the sha256 of the whole
stream compared at both ends) and request/response latency, in one run, printed as a table and
a JSON line; our client stack's CPU per transaction or per MB, by layer with `--profile`.

Needs root (namespaces) and iproute2/ethtool. A veth has no wire: TSO super-segments and GRO
cross it whole, so the offload figures here show the stack's cost per byte with the fewest
frames a NIC could give it, not what a NIC would do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from guest.testing.netns import unavailable_reason, veth_pair

A, B = "198.18.79.1", "198.18.79.2"
PORT = 7301


def _traffic(ns: str, role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "guest.traffic", role, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"traffic tool printed nothing: {err[-500:]}")
    rec = json.loads(lines[-1])
    if "error" in rec:
        raise RuntimeError(f"{rec['role']}: {rec['error']}")
    return rec


def _path(pair: Any, side: str, path: str, offload: str, profile: bool = False) -> list[str]:
    if path == "kernel":
        return ["--path", "kernel"]
    iface, addr = (pair.if_a, A) if side == "a" else (pair.if_b, B)
    if path == "floor":
        return ["--path", "floor", "--iface", iface]
    return [
        *(["--stack-profile"] if profile else []),
        "--path",
        "mono",
        "--iface",
        iface,
        "--addr",
        f"{addr}/24",
        "--stack-socket",
        f"/run/stackbed/bench-veth-{iface}.sock",
        "--stack-offload",
        offload,
    ]


def run_pair(
    pair: Any, path: str, offload: str, kind: str, seconds: float, profile: bool = False
) -> dict[str, Any]:
    """One experiment: server on B, client on A; returns the client's and server's records."""
    stream = kind == "stream"
    server_role, client_role = ("sink", "source") if stream else ("rr-server", "rr-client")
    server = _traffic(
        pair.ns_b, server_role, *_path(pair, "b", path, offload, profile), "--port", str(PORT)
    )
    time.sleep(1.5 if path == "mono" else 0.3)  # the server's stack takes the NIC first
    amount = ["--duration", str(seconds)]
    client = _traffic(
        pair.ns_a,
        client_role,
        *_path(pair, "a", path, offload, profile),
        "--peer",
        B,
        "--port",
        str(PORT),
        *amount,
    )
    cli = _result(client, seconds + 60)
    srv = _result(server, 60)
    return {"client": cli, "server": srv}


def _costs(stack: dict[str, Any], units: float) -> dict[str, Any]:
    """The client stack's loop CPU per unit (rr transaction or MB), and by layer if profiled."""
    if not units:
        return {}
    cpu = stack["cpu"]["user_s"] + stack["cpu"]["system_s"]
    out: dict[str, Any] = {"stack_cpu_us_per_unit": round(cpu / units * 1e6, 1)}
    if profile := stack.get("profile"):
        out["profile_us_per_unit"] = {
            layer: round(seconds / units * 1e6, 1) for layer, seconds in profile["layers"].items()
        }
    return out


def _print_costs(rows: list[dict[str, Any]]) -> None:
    """Our client stack's CPU per transaction (rr) or per MB (stream), by layer if profiled."""
    costs = [r for r in rows if "stack_cpu_us_per_unit" in r]
    if not costs:
        return
    layers = sorted({k for r in costs for k in r.get("profile_us_per_unit", {})})
    head = f"{'path':8} {'levers':6} {'type':6} {'stack CPU':>16}"
    print(head + "".join(f" {name:>8}" for name in layers))
    for r in costs:
        unit = "us/MB" if r["type"] == "stream" else "us/txn"
        cpu = r["stack_cpu_us_per_unit"]
        line = f"{r['path']:8} {r['offload']:6} {r['type']:6} {cpu:9.1f} {unit:6}"
        by_layer = r.get("profile_us_per_unit", {})
        print(line + "".join(f" {by_layer.get(name, 0.0):8.1f}" for name in layers))


def _linux_side(ns: str, iface: str, addr: str) -> None:
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", iface], check=True)


def _flush(ns: str, iface: str) -> None:
    subprocess.run(["ip", "-n", ns, "addr", "flush", "dev", iface], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.bench.veth", description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0, help="per experiment (default 5)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="our stacks profile their loops: their CPU per transaction or MB, by layer "
        "(cProfile roughly doubles it: compare profiled runs with each other only)",
    )
    args = ap.parse_args(argv)
    if (why := unavailable_reason()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with veth_pair() as pair:
        plans = [("kernel", "-"), ("floor", "-"), ("mono", "all"), ("mono", "none")]
        for path, offload in plans:
            if path == "kernel":
                _linux_side(pair.ns_a, pair.if_a, A)
                _linux_side(pair.ns_b, pair.if_b, B)
            for kind in ("stream", "rr"):
                got = run_pair(pair, path, offload, kind, args.seconds, args.profile)
                cli, srv = got["client"], got["server"]
                row: dict[str, Any] = {"path": path, "offload": offload, "type": kind}
                if kind == "stream":
                    if cli["sha256"] != srv["sha256"] or cli["bytes"] != srv["bytes"]:
                        raise RuntimeError(f"{path} stream corrupted: {cli} {srv}")
                    row["mbit_per_s"] = round(srv["mbit_per_s"], 1)
                    row["sha256_ok"] = True
                else:
                    row["transactions_per_s"] = round(cli["transactions_per_s"])
                    row["p50_us"] = round(cli["latency_us"]["p50"], 1)
                    row["p99_us"] = round(cli["latency_us"]["p99"], 1)
                stack = cli.get("stack") or {}
                if stack and path == "floor":
                    row["retransmits"] = stack["floor"]["resent"]
                elif stack:
                    units = cli["bytes"] / 1e6 if kind == "stream" else cli["transactions"]
                    row.update(_costs(stack, units))
                    row["retransmits"] = stack["stack"].get("tcp.retransmits_fast", 0) + stack[
                        "stack"
                    ].get("tcp.retransmits_timeout", 0)
                    if kind == "rr" and cli["transactions"]:
                        # Wakeups of the client's stack per transaction: the application's
                        # request and the peer's answer are two; anything more is overhead.
                        passes = stack["loop"]["passes"] / cli["transactions"]
                        row["loop_passes_per_transaction"] = round(passes, 2)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            if path == "kernel":
                _flush(pair.ns_a, pair.if_a)
                _flush(pair.ns_b, pair.if_b)
    kernel = {r["type"]: r for r in rows if r["path"] == "kernel"}
    _print_costs(rows)
    print(f"{'path':8} {'levers':6} {'Mbit/s':>9} {'of kernel':>9} {'trans/s':>8} {'p50 us':>8}")
    for r in rows:
        if r["type"] == "stream":
            share = r["mbit_per_s"] / kernel["stream"]["mbit_per_s"]
            print(f"{r['path']:8} {r['offload']:6} {r['mbit_per_s']:9.1f} {share:9.1%}")
        else:
            print(
                f"{r['path']:8} {r['offload']:6} {'':9} {'':9} "
                f"{r['transactions_per_s']:8d} {r['p50_us']:8.1f}"
            )
    print(json.dumps({"bench": "veth", "cpus": os.cpu_count(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Transfer time through a lossy link, Linux against our stack as the sender:
`python3 -m guest.bench.loss`.

A —veth— M —veth— B in three namespaces; M runs the user-space impairment relay
(`guest.tools.relay`, this host's kernel has no netem), B runs a Linux sink with its offloads
off. A sends a fixed number of bytes as Linux (the kernel path), then as our monolithic stack,
then as the factored one, each through a fresh relay with the same seed, so each sender meets
the same frame-by-frame fate: frame k of every transfer is lost or not alike. Loss rates and
rounds are interleaved (round 1 at every rate, then round 2, ...), so a host that slows down
during the run slows every sender alike. Each transfer is checked byte for byte (sha256 at
both ends). What it answers: how much longer our sender needs than Linux at each loss rate,
and why (its retransmissions, timeouts and recoveries, the relay's count of what was lost;
for Linux the same from the sender namespace's kernel counters).

Prints one JSON line per transfer on stderr as it goes, then a table and the whole result as
one JSON line on stdout. Needs root, iproute2 and ethtool.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guest.testing.netns import ns_cmd, snmp_counters, unavailable_reason
from guest.testing.netns_chain import VethChain, offloads_off, veth_chain

SENDER_ADDR, SINK_ADDR = "198.18.77.1", "198.18.77.2"
PORT = 7401
SENDERS = ("linux", "mono", "factored")
#: With --ablation: our monolithic stack with mechanisms turned off, to show what each buys.
ABLATION = {
    "mono-rfc6675": "rack,tlp,prr",  # SACK recovery as it was before RACK-TLP and PRR
    "mono-rack": "tlp,prr",
    "mono-rack-tlp": "prr",
}
#: Longest one transfer may take before it counts as failed (42x Linux's 0.2 s is 8.4 s).
TRANSFER_TIMEOUT_S = 120.0
#: The stack counters a row keeps: what the sender did about the losses.
STACK_COUNTERS = (
    "tcp.retransmits_fast",
    "tcp.retransmits_timeout",
    "tcp.fast_recoveries",
    "tcp.timeouts",
    "tcp.segments_out",
    "tcp.tlp_probes",
    "tcp.tlp_repairs",
    "tcp.rack_lost",
)
#: The kernel's counters a Linux row keeps (/proc/net/netstat and snmp of the sender's
#: namespace, which are per namespace): the same questions asked of Linux.
KERNEL_COUNTERS = (
    "Tcp.RetransSegs",
    "TcpExt.TCPTimeouts",
    "TcpExt.TCPLossProbes",
    "TcpExt.TCPLossProbeRecovery",
    "TcpExt.TCPSackRecovery",
    "TcpExt.TCPFastRetrans",
    "TcpExt.TCPLostRetransmit",
    "TcpExt.TCPSlowStartRetrans",
)
ROOT = Path(__file__).resolve().parents[2]


def kernel_counters(ns: str) -> dict[str, int]:
    """The TCP counters of namespace `ns`'s kernel this row keeps, now."""
    counters = snmp_counters(ns)
    return {k: counters.get(k, 0) for k in KERNEL_COUNTERS}


def _start(ns: str, module: str, *args: str, cpu: int | None) -> subprocess.Popen[str]:
    argv = ns_cmd(ns, [sys.executable, "-m", module, *args])
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )


def _event(proc: subprocess.Popen[str], event: str, stderr: bool = False) -> dict[str, Any]:
    """The JSON line `{"event": event}` a process prints once it serves."""
    stream = proc.stderr if stderr else proc.stdout
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], 30.0)
    line = stream.readline().strip() if ready else ""
    try:
        record = json.loads(line)
    except ValueError:
        record = {}
    if record.get("event") != event:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"expected {event!r} from {proc.args[-6:]}, got {line!r}: {err[-800:]}")
    return record


def _final(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The last JSON line the process printed on stdout; an error if it failed or hung."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"timed out after {timeout:.0f} s: {err[-800:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"exit {proc.returncode}: {out[-400:]} {err[-800:]}")
    return json.loads(lines[-1])


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Whatever is started into the list is stopped on the way out: SIGTERM (a stack gives its
    NIC back), then SIGKILL."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.terminate()
    return _final(proc, 15)


def _addr(ns: str, iface: str, addr: str | None) -> None:
    """Give `iface` the address (Linux sends), or none (our stack owns the NIC)."""
    subprocess.run(["ip", "-n", ns, "addr", "flush", "dev", iface], check=True)
    if addr is not None:
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", iface], check=True)


def relay_args(chain: VethChain, loss: float, delay_ms: float, seed: int) -> list[str]:
    """The relay's impairment: `loss` percent of the frames in each direction, a fixed delay."""
    args = ["--a", chain.if_ma, "--b", chain.if_mb, "--loss", f"{loss}%", "--seed", str(seed)]
    if delay_ms:
        args += ["--delay-ms", str(delay_ms)]
    return args


def transfer(
    chain: VethChain, sender: str, loss: float, args: argparse.Namespace, seed: int, sock: str
) -> dict[str, Any]:
    """One transfer of `args.bytes` from A to B's Linux sink through a fresh relay."""
    cpu = args.cpu
    with _processes() as procs:
        impairment = relay_args(chain, loss, args.delay_ms, seed)
        relay = _start(chain.ns_m, "guest.tools.relay", *impairment, cpu=cpu)
        procs.append(relay)
        _event(relay, "ready")
        stack = None
        path = ["--path", "kernel", "--kernel-cc", args.linux_cc]
        if sender != "linux":
            kind = "mono" if sender in ABLATION else sender
            stack_args = ["--iface", chain.if_a, "--addr", f"{SENDER_ADDR}/24", "--socket", sock]
            stack_args += ["--offload", "none", *(["--cc", args.cc] if args.cc else [])]
            if sender in ABLATION:
                stack_args += ["--tcp-disable", ABLATION[sender]]
            stack = _start(chain.ns_a, f"guest.stack.{kind}", *stack_args, cpu=cpu)
            procs.append(stack)
            _event(stack, "ready")
            path = ["--path", kind, "--stack-socket", sock]
        sink = _start(chain.ns_b, "guest.traffic", "sink", "--port", str(PORT), cpu=cpu)
        procs.append(sink)
        _event(sink, "listening", stderr=True)
        before = kernel_counters(chain.ns_a) if stack is None else None
        source = _start(
            chain.ns_a, "guest.traffic", "source", *path, "--peer", SINK_ADDR, "--port",
            str(PORT), "--bytes", str(args.bytes), "--seed", str(seed), cpu=cpu,
        )  # fmt: skip
        procs.append(source)
        sent = _final(source, TRANSFER_TIMEOUT_S)
        got = _final(sink, 30)
        kernel = None
        if before is not None:
            after = kernel_counters(chain.ns_a)
            kernel = {k: after[k] - before[k] for k in KERNEL_COUNTERS}
        if sent.get("error") or got.get("error"):
            raise RuntimeError(f"{sender} at {loss} %: {sent.get('error') or got.get('error')}")
        if not (sent["bytes"] == got["bytes"] == args.bytes and sent["sha256"] == got["sha256"]):
            raise RuntimeError(f"{sender} at {loss} %: the bytes differ: {sent} {got}")
        counters = _stop(stack)["stats"]["stack"] if stack is not None else {}
        link = _stop(relay)["stats"]["a_to_b"]
    row: dict[str, Any] = {
        "sender": sender,
        "loss_percent": loss,
        "seed": seed,
        "seconds": round(sent["seconds"], 4),
        "bytes": args.bytes,
        "sha256_ok": True,
        "lost": link["lost"],
        "frames": link["offered"],
        "resent_on_wire": link["tcp_retransmitted"],
    }
    if "tcp_congestion" in sent:
        row["linux_cc"] = sent["tcp_congestion"]  # what the kernel says it used
    if counters:
        row["stack"] = {k: counters[k] for k in STACK_COUNTERS if k in counters}
    if kernel is not None:
        row["kernel"] = kernel
    return row


#: A row's retransmission timeouts and tail loss probes, from its own stack's counters.
_TIMEOUTS = {"stack": "tcp.timeouts", "kernel": "TcpExt.TCPTimeouts"}
_PROBES = {"stack": "tcp.tlp_probes", "kernel": "TcpExt.TCPLossProbes"}


def _count(row: dict[str, Any], names: dict[str, str]) -> int | None:
    for source, name in names.items():
        if name in row.get(source, {}):
            return row[source][name]
    return None


def _median_of(rows: Sequence[dict[str, Any]], names: dict[str, str]) -> float | None:
    values = [v for r in rows if (v := _count(r, names)) is not None]
    return statistics.median(values) if values else None


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per loss rate and sender: the median time over rounds, and its ratio to Linux's."""
    out: list[dict[str, Any]] = []
    for loss in sorted({r["loss_percent"] for r in rows}):
        at = [r for r in rows if r["loss_percent"] == loss]
        medians = {
            s: statistics.median(r["seconds"] for r in at if r["sender"] == s)
            for s in dict.fromkeys(r["sender"] for r in at)
        }
        for sender, seconds in medians.items():
            linux = medians.get("linux")
            mine = [r for r in at if r["sender"] == sender]
            out.append(
                {
                    "loss_percent": loss,
                    "sender": sender,
                    "median_s": round(seconds, 4),
                    "of_linux": round(seconds / linux, 2) if linux else None,
                    "rounds": sum(1 for r in at if r["sender"] == sender),
                    "resent_on_wire": statistics.median(r["resent_on_wire"] for r in mine),
                    "timeouts": _median_of(mine, _TIMEOUTS),
                    "probes": _median_of(mine, _PROBES),
                }
            )
    return out


def _table(summary: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'loss':>5} {'sender':9} {'median s':>9} {'x Linux':>8} {'resent':>7} {'RTOs':>5} "
        f"{'probes':>6}"
    ]
    for s in summary:
        ratio = "" if s["of_linux"] is None else f"{s['of_linux']:.2f}"
        rtos = "" if s["timeouts"] is None else f"{s['timeouts']:g}"
        probes = "" if s["probes"] is None else f"{s['probes']:g}"
        lines.append(
            f"{s['loss_percent']:>4g}% {s['sender']:9} {s['median_s']:9.3f} {ratio:>8} "
            f"{s['resent_on_wire']:7g} {rtos:>5} {probes:>6}"
        )
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.bench.loss", description=__doc__)
    ap.add_argument("--bytes", type=int, default=4_000_000, help="per transfer (default 4 MB)")
    ap.add_argument("--loss", type=_floats, default=[0, 1, 2, 5], help="percent, e.g. 0,1,2,5")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay of the relay")
    ap.add_argument("--senders", default=",".join(SENDERS), help="of linux,mono,factored")
    ap.add_argument("--rounds", type=int, default=3, help="transfers per sender and rate")
    ap.add_argument("--seed", type=int, default=1, help="round k uses seed + k")
    ap.add_argument("--cc", help="our stack's congestion control (default: its own)")
    ap.add_argument(
        "--linux-cc",
        default="cubic",
        help="Linux's congestion control as the sender (default cubic, Debian's default; a "
        "host's own may differ: bbr does not back off on random loss at all)",
    )
    ap.add_argument("--cpu", type=int, help="run every process on this CPU only")
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also run our mono stack without PRR, without TLP and PRR, and without RACK, TLP "
        "and PRR: what each mechanism buys",
    )
    args = ap.parse_args(argv)
    senders = [s for s in args.senders.split(",") if s]
    if unknown := set(senders) - set(SENDERS) - set(ABLATION):
        ap.error(f"unknown sender {', '.join(sorted(unknown))} (of {', '.join(SENDERS)})")
    if args.ablation:
        senders += [s for s in ABLATION if s not in senders]
    if (why := unavailable_reason()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with veth_chain() as chain, tempfile.TemporaryDirectory(prefix="stackbed-loss-") as tmp:
        offloads_off(chain.ns_a, chain.if_a)
        offloads_off(chain.ns_b, chain.if_b)
        _addr(chain.ns_b, chain.if_b, f"{SINK_ADDR}/24")
        sock = str(Path(tmp) / "stack.sock")
        started = time.monotonic()
        for k in range(args.rounds):
            for loss in args.loss:
                for sender in senders:
                    linux = sender == "linux"
                    _addr(chain.ns_a, chain.if_a, f"{SENDER_ADDR}/24" if linux else None)
                    row = transfer(chain, sender, loss, args, args.seed + k, sock)
                    row["round"] = k + 1
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
    summary = summarise(rows)
    print(f"Linux sends with {args.linux_cc}; our stack with {args.cc or 'its default'}")
    print(_table(summary))
    print(
        json.dumps(
            {
                "bench": "loss",
                "bytes": args.bytes,
                "delay_ms": args.delay_ms,
                "cc": args.cc,
                "linux_cc": args.linux_cc,
                "seconds": round(elapsed, 1),
                "summary": summary,
                "rows": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ping`: ICMP round trips through the kernel."""

from __future__ import annotations

import re

from host.experiments.base import BenchError, ExperimentType, Gate, Target
from host.experiments.columns import P50_US, P99_US


def run(t: Target) -> dict:
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


TYPE = ExperimentType(
    name="ping",
    run=run,
    kernel_only=True,
    transport="icmp",
    gates=(Gate("rtt_avg_us", "rtt avg", "lower"),),
    # No percentiles from ping: its average and maximum round trip stand in for them.
    columns={P50_US: "rtt_avg_us", P99_US: "rtt_max_us"},
    note="p50/p99 for ping are avg/max RTT",
)

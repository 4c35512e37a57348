"""`iperf3`: the reference tool on the same link, for comparison with the traffic tool (always
the kernel's stack)."""

from __future__ import annotations

import json

from host.experiments.base import BenchError, ExperimentType, Gate, Target
from host.experiments.columns import MBIT_PER_S, TCP_COSTS
from host.experiments.measure import host_cpu_since, host_cpu_times, wait_listening


def run(t: Target) -> dict:
    e = t.exp
    seconds = max(1, round(e.duration_s))
    # `timeout` bounds the server even if no client ever reaches it.
    srv = t.server.start(
        f"exec timeout {seconds + 90} iperf3 -s -1 -J -B {t.server_ip} -p {t.port}"
    )
    wait_listening(t.server, t.port)
    cpu0 = host_cpu_times()
    cli = t.client.run(
        f"iperf3 -c {t.connect_ip} -p {t.port} -t {seconds} -J", timeout=e.duration_s + 60
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


TYPE = ExperimentType(
    name="iperf3",
    run=run,
    kernel_only=True,
    columns={MBIT_PER_S: "mbit_per_s", **TCP_COSTS},
    path_label="kernel (iperf3)",
    gates=(Gate("mbit_per_s", "throughput", "higher"),),
    plot="throughput",
)

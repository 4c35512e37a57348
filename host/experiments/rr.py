"""`rr`: request/response transactions over the traffic tool, latency percentiles from the
client."""

from __future__ import annotations

import shlex
from typing import Annotated

from pydantic import Field

from host.experiments.base import Compared, ExperimentType, Gate, Option, Target
from host.experiments.columns import P50_US, P99_US, TCP_COSTS, TRANSACTIONS_PER_S
from host.experiments.measure import (
    host_cpu_since,
    host_cpu_times,
    tool_figures,
    traffic_pair,
)
from host.fields import NO_BOOL

RrSize = Annotated[int, NO_BOOL, Field(ge=1, le=65536)]


def run(t: Target) -> dict:
    e = t.exp
    common = (
        f"--timeout 30 --label {shlex.quote(e.name)} "
        f"--req-size {e.req_size} --resp-size {e.resp_size}"
    )
    cpu0 = host_cpu_times()
    cli, srv = traffic_pair(
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
        **tool_figures(cli, srv, host_cpu_since(cpu0)),
    }


TYPE = ExperimentType(
    name="rr",
    run=run,
    options={"req_size": Option(RrSize, 64), "resp_size": Option(RrSize, 64)},
    columns={TRANSACTIONS_PER_S: "transactions_per_s", P50_US: "p50_us", P99_US: "p99_us"}
    | TCP_COSTS,
    compared=Compared("p50_us", "p50 latency"),
    gates=(
        Gate("p50_us", "p50 latency", "lower"),
        Gate("p99_us", "p99 latency", "lower", gated=False),
    ),
    plot="latency",
)

"""`transfer`: a fixed number of bytes from client to server, sha256-checked, timed from
connect until the server has everything and closed.

The figure for loss recovery: through an impaired link (`impair:`, netem in the guests) a
stream's throughput over a fixed duration hides how a sender recovers, while the time to move
a fixed amount is what a user waits for, and what the loss benchmark in namespaces
(`guest.bench.loss`) measures the same way. The ratio to the kernel path's time under the
same impairment says how our sender recovers against Linux's.
"""

from __future__ import annotations

import shlex
from typing import Annotated

from pydantic import Field

from host.experiments.base import BenchError, Column, Compared, ExperimentType, Gate, Option, Target
from host.experiments.columns import MBIT_PER_S, TCP_COSTS
from host.experiments.measure import host_cpu_since, host_cpu_times, tool_figures, traffic_pair
from host.fields import NO_BOOL

Bytes = Annotated[int, NO_BOOL, Field(ge=1, le=1 << 30)]
SECONDS = Column("seconds", 5, ".3f")


def run(t: Target) -> dict:
    e = t.exp
    common = f"--timeout 60 --label {shlex.quote(e.name)}"
    cpu0 = host_cpu_times()
    cli, srv = traffic_pair(
        t, common, f"{common} --bytes {e.bytes}", "sink", "source", timeout=e.duration_s + 300
    )
    host_cpu = host_cpu_since(cpu0)
    if not (cli["sha256"] == srv["sha256"] and cli["bytes"] == srv["bytes"] == e.bytes):
        raise BenchError(
            f"{e.name}: sent {cli['bytes']} bytes, got {srv['bytes']}: the stream differs"
        )
    return {
        "seconds": cli["seconds"],
        "mbit_per_s": cli["mbit_per_s"],
        "bytes": srv["bytes"],
        **tool_figures(cli, srv, host_cpu),
        "integrity": {"bytes": srv["bytes"], "match": True},
    }


TYPE = ExperimentType(
    name="transfer",
    run=run,
    options={"bytes": Option(Bytes, 4_000_000)},
    columns={SECONDS: "seconds", MBIT_PER_S: "mbit_per_s", **TCP_COSTS},
    compared=Compared("seconds", "transfer time"),
    gates=(Gate("seconds", "transfer time", "lower"),),
    check="[green]sha256 ok[/green]",
    plot="throughput",
    note="transfer: the time to deliver `bytes`, sha256-checked",
)

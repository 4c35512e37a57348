"""`stream`: the traffic tool's source->sink for `duration_s` with hashing off (sha256 in
software under TCG costs more CPU than the stack being measured), then a shorter
sha256-checked transfer through the same path: a stream result without a matching checksum
is a failure."""

from __future__ import annotations

import shlex
from typing import Annotated

from pydantic import Field

from host.experiments.base import BenchError, Compared, ExperimentType, Gate, Option, Target
from host.experiments.columns import MBIT_PER_S, TCP_COSTS
from host.experiments.measure import (
    host_cpu_since,
    host_cpu_times,
    tool_figures,
    traffic_pair,
)
from host.fields import NO_BOOL

INTEGRITY_BYTES = 8 * 1024 * 1024

MsgSize = Annotated[int, NO_BOOL, Field(ge=1, le=1048576)]


def run(t: Target) -> dict:
    e = t.exp
    common = f"--timeout 30 --label {shlex.quote(e.name)}"
    cpu0 = host_cpu_times()
    cli, srv = traffic_pair(
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
    icli, isrv = traffic_pair(
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
        **tool_figures(cli, srv, host_cpu),
        "integrity": integrity,
    }


TYPE = ExperimentType(
    name="stream",
    run=run,
    options={"msg_size": Option(MsgSize, 65536)},
    columns={MBIT_PER_S: "mbit_per_s", **TCP_COSTS},
    compared=Compared("mbit_per_s", "throughput"),
    gates=(Gate("mbit_per_s", "throughput", "higher"),),
    check="[green]sha256 ok[/green]",
    plot="throughput",
)

"""The veth benchmark (`guest.bench.veth`) runs end to end: kernel, floor and our stack with
and without levers, every stream byte-exact, a JSON line with every row, our stack's loop
passes per request/response transaction, and (profiled) its CPU by layer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from guest.testing.netns import leftovers, unavailable_reason
from host.paths import PROJECT_ROOT

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def test_bench_veth_reports_every_path() -> None:
    if (why := unavailable_reason()) is not None:
        pytest.skip(why)
    before = set(leftovers())
    done = subprocess.run(
        [sys.executable, "-m", "guest.bench.veth", "--seconds", "1", "--profile"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {(r["path"], r["offload"], r["type"]): r for r in report["rows"]}
    assert set(rows) == {
        (path, off, kind)
        for path, off in (("kernel", "-"), ("floor", "-"), ("mono", "all"), ("mono", "none"))
        for kind in ("stream", "rr")
    }
    for (_, _, kind), r in rows.items():
        if kind == "stream":
            assert r["sha256_ok"] and r["mbit_per_s"] > 0
        else:
            assert r["transactions_per_s"] > 0 and 0 < r["p50_us"] <= r["p99_us"]
    for levers in ("all", "none"):
        # The request and the answer wake the client's stack once each; the read that hands
        # the answer to the application is settled in the same pass (it once took a third).
        assert rows[("mono", levers, "rr")]["loop_passes_per_transaction"] < 2.5
        for kind in ("stream", "rr"):  # profiled: the stack's CPU per unit, by layer
            row = rows[("mono", levers, kind)]
            layers = row["profile_us_per_unit"]
            assert {"wire", "tcp", "core", "session", "device", "loop"} <= set(layers)
            assert 0.5 < sum(layers.values()) / row["stack_cpu_us_per_unit"] < 1.5
    assert set(leftovers()) == before  # the namespaces are gone

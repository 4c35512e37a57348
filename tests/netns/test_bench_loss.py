"""The loss benchmark end to end, small: Linux and our stack through the relay at 0 and 3 %
loss, every transfer byte-exact, and the figures where the table and the JSON say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from guest.testing.netns import unavailable_reason
from tests.netns.fixtures import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def test_the_loss_bench_runs_and_checks_every_transfer() -> None:
    if (why := unavailable_reason()) is not None:
        pytest.skip(why)
    out = subprocess.run(
        [sys.executable, "-m", "guest.bench.loss", "--rounds", "1", "--loss", "0,3",
         "--bytes", "300000", "--senders", "linux,mono"],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert {(r["sender"], r["loss_percent"]) for r in rows} == {
        ("linux", 0),
        ("linux", 3),
        ("mono", 0),
        ("mono", 3),
    }
    assert all(r["sha256_ok"] and r["bytes"] == 300_000 for r in rows)
    lossy = [r for r in rows if r["loss_percent"] == 3]
    # The same seed: both senders met the same frame-by-frame fate, and resent for it.
    assert all(r["lost"] > 0 and r["resent_on_wire"] > 0 for r in lossy)
    mono = next(r for r in lossy if r["sender"] == "mono")
    assert mono["stack"]["tcp.rack_lost"] > 0
    # Linux's own counters, from the sender's namespace only: it resent at 3 %, not at 0 %.
    linux = {r["loss_percent"]: r["kernel"] for r in rows if r["sender"] == "linux"}
    assert linux[3]["Tcp.RetransSegs"] > 0 == linux[0]["Tcp.RetransSegs"]
    assert "x Linux" in out.stdout

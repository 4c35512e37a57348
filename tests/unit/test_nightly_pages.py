"""The nightly's pages: the HTML report is self-contained and renders in a real browser
(Debian's headless Chromium) with its tables and plots; the Markdown summary is short."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from host.nightly import pages
from host.nightly.outcome import FAULT, REGRESSED, Outcome, Tier, compare_sets
from host.nightly.stats import Floors
from tests.unit.nightly_data import result_set

FLOORS = Floors({"tcg": {"throughput": 0.15, "p50 latency": 0.15}}, default=0.05)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def outcome(faults: list[str] | None = None) -> Outcome:
    base, cand = result_set(seed=5), result_set(seed=6, rounds=8, mono_factor=0.8)
    cand["results"][0]["sweep"] = {"family": "s", "parameter": "msg_size", "value": 1448}
    cand["results"][1]["sweep"] = {"family": "s", "parameter": "msg_size", "value": 65536}
    comparisons, _ = compare_sets([base], [cand], FLOORS)
    for c in comparisons:
        if c.verdict == "regressed":
            c.confirmed = True
    return Outcome(
        created="2026-12-06T02:30:00Z",
        candidate=[cand],
        baseline=[base],
        comparisons=comparisons,
        tiers=[Tier("unit", tests=900, skipped=2, time=80.0)],
        faults=faults or [],
        elapsed_s=1800.0,
    )


def test_the_report_holds_every_section_inline_and_fetches_nothing() -> None:
    page = pages.html(outcome())
    for anchor in ('id="metadata-table"', 'id="comparison-table"', 'id="tests-table"'):
        assert anchor in page
    assert 'class="results-table"' in page and 'id="ratios-plot"' in page
    assert page.count("<svg") >= 3  # results, ratios, the sweep
    assert "REGRESSED" in page and "mono-stream · throughput/kernel" in page
    # nothing to fetch: no scripts, stylesheets or images from elsewhere
    assert not re.search(r"<script|<link|<img|url\((?!#)", page)  # url(#clip): inside the page
    assert not re.search(r"(src|href)=\"https?:", page)


def test_the_status_and_the_faults_show() -> None:
    done = outcome(["lab nightly: guest m not reachable by SSH"])
    assert done.status == FAULT
    page = pages.html(done)
    assert "INFRASTRUCTURE FAULT" in page and "guest m not reachable" in page
    assert outcome().status == REGRESSED


def test_the_markdown_summary_is_short_and_names_the_regressions() -> None:
    text = pages.markdown(outcome())
    assert text.startswith("## stackbed nightly: REGRESSED")
    assert "### Regressions" in text and "mono-stream · throughput/kernel" in text
    assert len(text.splitlines()) < 60 and len(text) < 8000


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: ./quickstart.sh setup installs it (Debian package)")
    page = tmp_path / "report.html"
    page.write_text(pages.html(outcome()))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = page.as_uri()
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 4 and dom.stdout.count("<svg") >= 3
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [CHROMIUM, *flags, "--window-size=1280,2400", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = imread(str(shot))
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1280
    ink = (pixels[..., :3].mean(axis=2) < 0.6).mean()  # dark pixels: text, lines, bars
    assert 0.01 < ink < 0.5, f"the page looks blank or black ({ink:.3f} dark)"


def test_the_cross_check_pairs_the_kernel_stream_with_iperf3_round_by_round() -> None:
    from host.nightly.crosscheck import cross_check
    from tests.unit.nightly_data import record

    small = record("k.msg_size-1448", "stream", "kernel", "mbit_per_s", [100.0, 110.0])
    big = record("k.msg_size-65536", "stream", "kernel", "mbit_per_s", [400.0, 380.0])
    for rec, size in ((small, 1448), (big, 65536)):
        for run in rec["runs"]:
            run["raw"] = {"client": {"msg_size": size}}
            run["retransmits"] = 0
    iperf = record("iperf3", "iperf3", "kernel", "mbit_per_s", [300.0, 380.0], retransmits=99)
    iperf["runs"][1] = {"error": "boom", "round": 2}
    rows = cross_check({"results": [small, big, iperf]})
    assert rows == [
        {
            "round": 1,
            "stream": "k.msg_size-65536",
            "stream_mbit": 400.0,
            "iperf3_mbit": 300.0,
            "ratio": 0.75,
            "stream_retransmits": 0,
            "iperf3_retransmits": 99,
        }
    ]

"""Infrastructure faults on real VMs, as a user meets them: a guest that never reaches SSH
makes the nightly an `error` (exit 2), never a regression; a guest destroyed mid-bench ends
the runs that need it with an error naming it, while every other result is saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from junitparser import Error, Failure, JUnitXml

from host.paths import PROJECT_ROOT, console_log_dir
from tests.vm.conftest import unique_lab_name
from tests.vm.leftovers import domains_of

THREE = """\
lab: {name}
nodes: [{{name: a}}, {{name: m}}, {{name: b}}]
links:
  - endpoints: [a, m]
  - endpoints: [m, b]
experiments:
  - {{name: to-b, type: stream, client: a, server: b, duration_s: 20}}
  - {{name: to-m, type: stream, client: a, server: m, duration_s: 2}}
  - {{name: rr-b, type: rr, client: a, server: b, duration_s: 2}}
"""

TWO = """\
lab: {name}
nodes: [{{name: a}}, {{name: b}}]
links:
  - endpoints: [a, b]
experiments:
  - {{name: s, type: stream, client: a, server: b, duration_s: 2}}
"""


def invoke(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})},
    )


def test_a_guest_that_never_reaches_ssh_is_an_error_not_a_failure(tmp_path: Path) -> None:
    name = unique_lab_name("tf")
    config = tmp_path / "two.yaml"
    config.write_text(TWO.format(name=name))
    out = tmp_path / "night"
    proc = invoke(
        "nightly",
        "--configs",
        str(config),
        "--tiers",
        "none",
        "--rounds",
        "1",
        "--history",
        "none",
        "--out",
        str(out),
        env={"STACKBED_BOOT_TIMEOUT_S": "0.5"},  # no guest answers SSH that fast
    )
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, stdout[-3000:]
    xml = JUnitXml.fromfile(str(out / "junit.xml"))
    results = [r for suite in xml for case in suite for r in case.result]
    assert any(isinstance(r, Error) and "not reachable by SSH" in r.message for r in results)
    assert not any(isinstance(r, Failure) for r in results)
    assert "INFRASTRUCTURE FAULT" in (out / "summary.md").read_text()
    assert "INFRASTRUCTURE FAULT" in (out / "report.html").read_text()
    assert domains_of(name) == []


def test_a_guest_destroyed_mid_bench_ends_only_what_needs_it(tmp_path: Path) -> None:
    name = unique_lab_name("tg")
    config = tmp_path / "three.yaml"
    config.write_text(THREE.format(name=name))
    proc = invoke("bench", "--config", str(config), "--out", str(tmp_path / "results"))
    lines: list[str] = []
    destroyed = False
    deadline = time.monotonic() + 600
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if not destroyed and "[1/3] to-b" in line:
            time.sleep(6)  # the 20 s stream is under way
            subprocess.run(
                ["virsh", "-c", "qemu:///system", "destroy", f"sb-{name}-b"],
                check=True,
                capture_output=True,
            )
            destroyed = True
        assert time.monotonic() < deadline, "".join(lines)[-3000:]
    proc.wait(timeout=120)
    text = "".join(lines)
    assert destroyed and proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text
    data = json.loads((tmp_path / "results" / "latest.json").read_text())
    runs = {r["experiment"]: r["runs"][0] for r in data["results"]}
    lost = runs["to-b"]
    assert lost["error_kind"] == "infrastructure"
    assert f"node b lost: libvirt says domain sb-{name}-b is shut off" in lost["error"]
    assert str(console_log_dir(name) / "b.console.log") in lost["error"]
    assert runs["to-m"].get("error") is None and runs["to-m"]["integrity"]["match"]
    assert runs["rr-b"]["error"].startswith("not run: node b lost")
    assert domains_of(name) == []  # the lab was torn down

"""Nothing leaks: lab.down, Ctrl-C during bring-up, and a SIGKILLed owner leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from host.accel import accel_for
from host.config import load_lab
from host.lab import Lab, LabState
from host.paths import PROJECT_ROOT
from host.ssh import GUEST_DIR
from tests.vm.conftest import DEFAULT_CONFIG, start_keeper, unique_lab_name
from tests.vm.leftovers import domains_of, leftovers, wait_clean

BROKEN = PROJECT_ROOT / "tests" / "configs" / "broken"


def _reap(keeper: subprocess.Popen) -> None:
    """SIGKILL a keeper a test left alive: libvirt and its guardian then clean up its lab."""
    if keeper.poll() is None:
        keeper.kill()
        keeper.wait(timeout=30)


def _wait_for_domains(name: str, count: int, timeout: float = 120) -> LabState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = LabState.load(name)
        if state is not None and len(domains_of(name)) == count:
            return state
        time.sleep(0.1)
    raise AssertionError(f"lab {name} never had {count} domains")


def test_lab_down_leaves_nothing():
    name = unique_lab_name("td")
    config = load_lab(DEFAULT_CONFIG)
    lab = Lab(config, accel=accel_for(config.image), name=name, progress=print)
    state = lab.up()
    ports = [n.ssh_port for n in state.nodes]
    assert len(domains_of(name)) == 2 and all(os.path.exists(n.console_log) for n in state.nodes)
    lab.down()
    assert leftovers(name, ports, state.run_dir) == {}
    # the console logs are artifacts for the user, kept on purpose
    assert all(os.path.exists(n.console_log) for n in state.nodes)


def test_ctrl_c_during_bring_up_tears_everything_down():
    name = unique_lab_name("ti")
    # Started with SIGINT ignored, as a background job of a script would be: the owner must
    # still take Ctrl-C.
    keeper = start_keeper(DEFAULT_CONFIG, name, ignore_sigint=True)
    try:
        state = _wait_for_domains(name, 2)  # domains exist, guests still booting
        keeper.send_signal(signal.SIGINT)
        # Below the 90 s boot deadline: boot waits must be cancelled, not waited out.
        out, _ = keeper.communicate(timeout=60)
    finally:
        _reap(keeper)
    assert "READY" not in out, "the interrupt came too late to test an interrupted bring-up"
    ports = [n.ssh_port for n in state.nodes]
    assert wait_clean(name, ports, state.run_dir, timeout=10) == {}


def test_sigkilled_owner_leaves_nothing_behind():
    name = unique_lab_name("tk")
    keeper = start_keeper(DEFAULT_CONFIG, name)
    try:
        for line in keeper.stdout:
            if line.startswith("READY") or line.startswith("FAILED"):
                break
        assert line.startswith("READY"), line
        state = LabState.load(name)
        ports = [n.ssh_port for n in state.nodes]
        assert len(domains_of(name)) == 2
    finally:
        _reap(keeper)  # SIGKILL: no teardown code of ours runs in the owner
    # libvirt's AUTODESTROY kills the domains, the guardian removes the files
    assert wait_clean(name, ports, state.run_dir, timeout=60) == {}


@pytest.mark.parametrize(
    "broken",
    ["link_missing_node.yaml", "yaml_syntax_error.yaml", "address_outside_bench_range.yaml"],
)
def test_broken_config_stops_before_anything_starts(broken):
    path = BROKEN / broken
    assert path.exists(), f"fixture {path} is gone"
    before = domains_of_all()
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "bench", "--config", str(path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}:" in proc.stdout.replace("\n", "")
    assert domains_of_all() == before


def domains_of_all() -> set[str]:
    from host.virt import connect, tagged_domains

    conn = connect()
    try:
        return {d.name() for d, _ in tagged_domains(conn)}
    finally:
        conn.close()


def test_bench_reports_kernel_path_beside_iperf3(tmp_path):
    """The whole bench pipe on a short config: JSON with metadata, integrity checked."""
    cfg = tmp_path / "short.yaml"
    cfg.write_text(
        DEFAULT_CONFIG.read_text()
        .replace("duration_s: 10", "duration_s: 2")
        .replace("duration_s: 5", "duration_s: 2")
        .replace("lab: default", f"lab: {unique_lab_name('tb')}")
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "bench",
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "results"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results" / "latest.json").read_text())
    meta = data["metadata"]
    assert meta["accel"] in ("kvm", "tcg") and meta["host"]["qemu"] and meta["guest_kernel"]
    by_name = {r["experiment"]: r for r in data["results"]}
    assert not any(r["errors"] for r in data["results"])
    stream = by_name["kernel-stream"]["runs"][0]
    assert stream["integrity"]["match"] and stream["mbit_per_s"] > 0
    assert by_name["iperf3"]["summary"]["mbit_per_s"] > 0
    assert by_name["kernel-rr"]["summary"]["p50_us"] > 0
    assert "kernel-stream" in proc.stdout and "iperf3" in proc.stdout


def test_bench_on_a_running_lab_measures_this_trees_guest_code(tmp_path):
    """A lab kept up with lab.up got the guest code of its day; a bench on it after the code
    changed must run the code of now, not the stale copy (or its results name a commit whose
    code never ran). A marker left in the deployed tree must be gone after the bench."""
    name = unique_lab_name("tr")
    cfg = tmp_path / "running.yaml"
    cfg.write_text(DEFAULT_CONFIG.read_text().replace("lab: default", f"lab: {name}"))
    keeper = start_keeper(cfg, name)
    try:
        for line in keeper.stdout:
            if line.startswith("READY") or line.startswith("FAILED"):
                break
        assert line.startswith("READY"), line
        state = LabState.load(name)
        a = state.guest("a")
        marker = f"{GUEST_DIR}/guest/stale-marker"
        a.run(f"touch {marker}", timeout=30).check()
        a.close()
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", "bench", "--config", str(cfg), "--only", "ping",
             "--out", str(tmp_path / "results")],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "using running lab" in proc.stdout and "deploying" in proc.stdout, proc.stdout
        a = state.guest("a")
        gone = a.run(f"test -e {marker} && echo stale || echo fresh", timeout=30).stdout
        a.close()
        assert gone.strip() == "fresh"
    finally:
        _reap(keeper)

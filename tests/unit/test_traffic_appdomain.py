"""The traffic tool's application domain: the workload runs confined in a child, its result
comes back, and what it may not do is denied there."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guest.stack.factored import sandbox
from guest.traffic.appdomain import APP_UID, AppDomainError, run_confined
from guest.traffic.metrics import read_proc_stat
from host.paths import PROJECT_ROOT

pytestmark = pytest.mark.skipif(sandbox.supported() is not None, reason=str(sandbox.supported()))


def test_the_workload_runs_confined_and_its_result_comes_back() -> None:
    def workload() -> dict:
        return {"uid": os.getuid(), "pid": os.getpid(), "stat": read_proc_stat()}

    result, domain = run_confined(workload)
    assert result["uid"] == APP_UID and result["pid"] != os.getpid()
    assert result["stat"] is not None  # the meter's /proc/stat was opened before confinement
    assert domain["confined"] and domain["policy"] == "app" and domain["seccomp_mode"] == 2
    assert domain["cap_eff"] == 0


def test_on_fork_lets_the_parent_drop_what_the_domain_alone_holds() -> None:
    """A pipe whose write end only the domain keeps: the parent closes its copy in on_fork,
    so the domain's exit is the pipe's EOF (as a session ends with the domain holding it)."""
    r, w = os.pipe()
    pids: list[int] = []

    def drop(pid: int) -> None:
        pids.append(pid)
        os.close(w)

    def workload() -> dict:
        os.write(w, b"x")
        return {"pid": os.getpid()}

    try:
        result, _ = run_confined(workload, on_fork=drop)
        assert pids == [result["pid"]]
        assert os.read(r, 10) == b"x" and os.read(r, 10) == b""  # nobody holds w any more
    finally:
        os.close(r)


@pytest.mark.parametrize(
    "attempt",
    [
        lambda: open("/etc/hostname").close(),
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close(),
        lambda: os.kill(os.getppid(), 0),
        lambda: os.fork(),
    ],
    ids=["open a file", "open a socket", "signal the tool", "fork"],
)
def test_what_an_application_may_not_do_is_denied(attempt) -> None:
    def workload() -> dict:
        attempt()
        return {"got": "through"}

    with pytest.raises(AppDomainError) as caught:
        run_confined(workload)
    assert caught.value.record["kind"] in ("PermissionError", "OSError"), caught.value.record


def test_a_crash_in_the_domain_is_reported() -> None:
    def workload() -> dict:
        ctypes.string_at(0)  # SIGSEGV (abort() would need tgkill, which the filter denies)
        return {}

    with pytest.raises(AppDomainError, match=r"died \(killed by signal SIGSEGV\)"):
        run_confined(workload)


TOOL = """
import os, sys, time
from guest.traffic.appdomain import run_confined
def workload():
    time.sleep(60)  # a confined domain may sleep; it must not outlive the tool
    return {}
run_confined(workload, on_fork=lambda pid: print(pid, flush=True))
"""


def test_a_tool_killed_outright_takes_its_application_domain_with_it() -> None:
    """The domain asks for SIGKILL when the tool dies; confine's privilege drop clears that
    request, so it must be made again after the drop (sandbox.confine does)."""
    tool = subprocess.Popen(
        [sys.executable, "-c", TOOL], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
    )
    domain = int(tool.stdout.readline())
    time.sleep(0.5)  # past the drop: confined, sleeping
    tool.kill()
    tool.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{domain}").exists():
        time.sleep(0.05)
    alive = Path(f"/proc/{domain}").exists()
    if alive:
        os.kill(domain, signal.SIGKILL)
    assert not alive, "the application domain outlived its tool"

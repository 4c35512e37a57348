"""Run a workload as its own application domain: a forked child under its own uid, without
capabilities, with no_new_privs and the factored stack's `APP` seccomp allowlist.

This is the third kind of protection domain of the factored design (after the driver and the
protocol domain): an application that can talk to the stack through the session it already
holds (its control socket, its rings and doorbells) and do nothing else: no new socket, no
file, no process, no signal. The traffic tool's root process stays outside, because it owns
what an application must not: the stack it started (which it stops with a signal) and the
terminal its result goes to. The child reports its result on a pipe.

Every module the workload needs is imported before the fork, and the CPU meter's /proc/stat
is opened before confinement (`metrics.read_proc_stat` keeps the fd): a confined process
cannot open files, so it cannot import either.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from guest.stack.factored import sandbox

from .metrics import read_proc_stat

#: The application domain's uid and gid: an unused system id, next to the stack's domains.
APP_UID = 64903


class AppDomainError(Exception):
    """The workload failed inside the domain: `record` is what it reported."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record.get("error", "the application domain failed"))
        self.record = record


def run_confined(
    workload: Callable[[], dict],
    uid: int = APP_UID,
    on_fork: Callable[[int], None] | None = None,
) -> tuple[dict, dict]:
    """`workload()` in a confined child; (its result, what confinement did).

    If this process cannot confine a child (not root, no seccomp), the workload runs here,
    unconfined, and the second item says why: results are never silently unconfined.
    Raises AppDomainError with the child's error record if the workload raised there.
    `on_fork(pid)` runs in this process once the child exists, before waiting for it: to let
    go of what the domain alone should hold (its sessions with a stack, so that they end when
    it dies), or to note whom to signal.
    """
    why = sandbox.supported()
    if why is not None:
        return workload(), {"confined": False, "why": why}
    read_proc_stat()  # opens /proc/stat now, while files may still be opened
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    tool = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is the parent's checks
        os.close(r)
        _child(workload, uid, w, tool)
    os.close(w)
    try:
        if on_fork is not None:
            on_fork(pid)
        data = _read_all(r)
    finally:
        os.close(r)
        _, status = _wait(pid)
    try:
        report = json.loads(data)
    except ValueError:
        how = sandbox.describe_wait_status(status)
        raise AppDomainError({"error": f"the application domain died ({how})"}) from None
    if "error" in report:
        raise AppDomainError(report)
    return report["result"], report["domain"]


def _child(workload: Callable[[], dict], uid: int, w: int, tool: int) -> None:
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sandbox.die_with_parent(tool)  # never outlive the tool
        info = {"confined": True, **sandbox.confine(uid, uid, sandbox.APP)}
        report: dict[str, Any] = {"result": workload(), "domain": info}
        code = 0
    except KeyboardInterrupt:
        report = {"error": "interrupted", "kind": "interrupted"}
    except BaseException as e:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        report = {"error": f"{type(e).__name__}: {e}", "kind": type(e).__name__}
        if isinstance(e, OSError):
            report["errno"] = e.errno
    try:
        data = json.dumps(report, default=str).encode()
        while data:
            data = data[os.write(w, data) :]
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait(pid: int) -> tuple[int, int]:
    """Reap the child; on an interrupt in the parent, kill it first so it never outlives us."""
    try:
        return os.waitpid(pid, 0)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise

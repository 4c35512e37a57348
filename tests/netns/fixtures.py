"""Shared netns plumbing for the device tests: skip rule, veth pairs, running code inside.

Everything that runs in a namespace is a subprocess under `ip netns exec` (Python 3.11 has no
`os.setns`), started from the project root with it on PYTHONPATH, so it can import both
`guest` and `tests`. The pair is deleted when `veth_pair()` exits, even on failure.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guest.testing.netns import VethPair, leftovers, ns_cmd, unavailable_reason, veth_pair
from guest.testing.netns_chain import VethChain, veth_chain

__all__ = [
    "Processes",
    "VethPair",
    "check",
    "final_record",
    "leftovers",
    "netns_chain",
    "netns_pair",
    "next_event",
    "probe",
    "receiver",
    "require_netns",
    "result",
    "send",
    "start",
    "veth_pair",
    "wait_event",
    "wait_ready",
]

ROOT = Path(__file__).resolve().parents[2]


def require_netns(*tools: str) -> None:
    """Skip the calling test, saying why, when namespaces cannot be made here or one of the
    command-line `tools` it runs is missing."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")


def netns_pair(mtu: int | None = None, tools: tuple[str, ...] = ()) -> Iterator[VethPair]:
    """Body of a pytest fixture: skip if impossible, else a fresh pair, deleted afterwards."""
    require_netns(*tools)
    with veth_pair(mtu) as pair:
        yield pair


def netns_chain(tools: tuple[str, ...] = ()) -> Iterator[VethChain]:
    """Body of a pytest fixture: skip if impossible, else a fresh A - M - B chain, whose three
    namespaces are checked gone afterwards."""
    require_netns(*tools)
    with veth_chain() as chain:
        yield chain
    assert not {chain.ns_a, chain.ns_m, chain.ns_b} & set(leftovers())


def start(ns: str, module: str, *args: str, cpu: int | None = None) -> subprocess.Popen[str]:
    """Run `python3 -m module args...` inside namespace `ns`, stdout captured as text; with
    `cpu`, it and all it starts run on that CPU only."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = ns_cmd(ns, [sys.executable, "-m", module, *args])
    return subprocess.Popen(
        argv if cpu is None else ["taskset", "-c", str(cpu), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def probe(ns: str, *args: str) -> subprocess.Popen[str]:
    """Start `guest.tools.probe` in `ns`."""
    return start(ns, "guest.tools.probe", *args)


def check(ns: str, name: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start `tests.netns.checks NAME` in `ns` with keyword arguments as JSON."""
    return start(ns, "tests.netns.checks", name, json.dumps(kwargs))


def receiver(pair: VethPair, *args: str) -> subprocess.Popen[str]:
    """`probe recv` on the B end, started and ready; collect it with `result()`."""
    proc = probe(pair.ns_b, "recv", "--iface", pair.if_b, *args)
    wait_ready(proc)
    return proc


def send(pair: VethPair, *args: str) -> dict[str, Any]:
    """Run `probe send` on the A end, addressed to B's MAC, to completion; its result."""
    return result(probe(pair.ns_a, "send", "--iface", pair.if_a, "--dst", pair.mac_b, *args))


def wait_ready(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Block until the process printed its "ready" line (it is bound and listening)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if line != "ready":
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"worker not ready (got {line!r}): {err.strip()[-2000:]}")


def result(proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    """The JSON line a worker printed last; fails the test with its stderr otherwise."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker timed out: {err.strip()[-2000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"worker failed ({proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(lines[-1])


class Processes:
    """Everything a test starts with `start()`, stopped on the way out whatever happened:
    SIGTERM first (so that a stack gives its NIC back), SIGKILL for whatever does not stop in
    time; stderr is shown with a failure. With `cpu`, every process runs on that CPU only."""

    def __init__(self, cpu: int | None = None) -> None:
        self.cpu = cpu
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, ns: str, module: str, *args: str) -> subprocess.Popen[str]:
        proc = start(ns, module, *args, cpu=self.cpu)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if exc_type is not None and err:  # pytest shows this with the failure
                label = " ".join(proc.args[proc.args.index("-m") - 1 :][:4])
                print(f"--- {label} (exit {proc.returncode}):\n{err[-2000:]}")


def wait_event(
    proc: subprocess.Popen[str], event: str, stderr: bool = False, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait for the JSON line `{"event": event, ...}` a process prints when it serves (a tool
    on stdout, the traffic tool on stderr). It must be the process's only output so far:
    `final_record()` later reads the pipes below Python's buffering."""
    stream = proc.stderr if stderr else proc.stdout
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout)
    line = stream.readline().strip() if ready else ""
    try:
        record = json.loads(line)
    except ValueError:
        record = {}
    if record.get("event") != event:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"expected {event!r}, got {line!r}: {err.strip()[-2000:]}")
    return record


def next_event(proc: subprocess.Popen[str], event: str, timeout: float = 30.0) -> dict[str, Any]:
    """The next stdout JSON line of `proc` whose event is `event` (others are skipped)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        record = json.loads(line)
        if record.get("event") == event:
            return record
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"no {event!r} line from {proc.args[-8:]}: {err[-3000:]}")


def final_record(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """The last JSON line a process printed on stdout, once it exited with status 0 (the
    traffic tool reports a failure as a JSON line with "error" on stdout, and a non-zero exit)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out: {out[-1000:]} {err[-2000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}: {out[-1000:]} {err[-2000:]}"
    return json.loads(lines[-1])

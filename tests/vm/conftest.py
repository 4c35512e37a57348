"""Fixtures that boot real QEMU guests under libvirt (marked `vm`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from host.accel import accel_for
from host.config import load_lab
from host.lab import Lab
from host.paths import PROJECT_ROOT, console_log_dir

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session", autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (qemu:///system)")


_made: list[str] = []


def unique_lab_name(prefix: str = "t") -> str:
    """A lab name no other run uses; its console logs are removed when the session ends."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _made.append(name)
    return name


def start_keeper(config: Path, name: str, ignore_sigint: bool = False) -> subprocess.Popen:
    """`host.keeper` owning lab `name` of `config` in its own process, its stdout and stderr
    on one pipe; a test must make sure it does not outlive it."""
    return subprocess.Popen(
        [sys.executable, "-m", "host.keeper", str(config), "--name", name],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        if ignore_sigint
        else None,
    )


@pytest.fixture(scope="session", autouse=True)
def _remove_test_console_logs():
    yield
    for name in _made:
        shutil.rmtree(console_log_dir(name), ignore_errors=True)


@pytest.fixture(scope="session")
def lab():
    """The default 2-node lab, up for the whole session, under a name of its own."""
    config = load_lab(DEFAULT_CONFIG)
    accel = accel_for(config.image)
    with Lab(config, accel=accel, name=unique_lab_name("ts"), progress=print) as lab:
        lab.up()
        yield lab

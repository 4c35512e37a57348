"""Fixtures that boot real QEMU guests under libvirt (marked `vm`)."""

from __future__ import annotations

import os
import uuid

import pytest

from host.config import load_lab
from host.lab import Lab
from host.paths import PROJECT_ROOT

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session", autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        pytest.skip("VM tests need root (qemu:///system)")


def unique_lab_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def lab():
    """The default 2-node lab, up for the whole session, under a name of its own."""
    with Lab(load_lab(DEFAULT_CONFIG), name=unique_lab_name("ts"), progress=print) as lab:
        lab.up()
        yield lab

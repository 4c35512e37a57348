"""The layer map (CONTRIBUTING.md, `[tool.importlinter]` in pyproject.toml) holds, and breaks.

The map is only worth something if breaking it fails `invoke lint`: each negative test copies
the code, makes one import of the kind the map forbids, and requires the contract that forbids
it to report it broken, while the untouched copy passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    args = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    for contract in contracts:
        args += ["--contract", contract]
    return subprocess.run(
        args,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The code and the contracts, without tests or caches, to break on purpose."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for room in ("guest", "host"):
        shutil.copytree(ROOT / room, tmp_path / room, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    assert sep, f"{module} has no __future__ import to add after"
    module.write_text(f"{head}{sep}\n{line}\n{rest}")


def test_the_code_keeps_the_layer_map() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_untouched_copy_keeps_it_too(copy: Path) -> None:
    result = lint_imports(copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # a protocol layer importing the layer above it
        ("guest/stack/wire/checksum.py", "import guest.stack.core.netstack", "stack-layers"),
        # a layer importing a tool
        ("guest/stack/core/netstack.py", "import guest.testing.stack_sim", "guest-rooms"),
        # the two wirings knowing each other
        ("guest/stack/mono.py", "import guest.stack.factored.launcher", "stack-layers"),
        # guest code that could not run in a VM
        ("guest/traffic/metrics.py", "import host.config", "guest-not-host"),
        # a cycle inside one package
        ("guest/traffic/errors.py", "import guest.traffic.providers", "no-cycles"),
        ("host/paths.py", "import host.lab", "no-cycles"),
    ],
)
def test_a_forbidden_import_breaks_it(copy: Path, module: str, line: str, contract: str) -> None:
    add_import(copy / module, line)
    result = lint_imports(copy, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert Path(module).stem in result.stdout  # the report names the offending module

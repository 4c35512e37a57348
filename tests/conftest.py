"""Suite-wide: leave no empty temporary folders behind.

pytest keeps a failed test's `tmp_path` (`tmp_path_retention_policy = "failed"` in
pyproject.toml) and deletes the others, but the numbered run folder
(/tmp/pytest-of-USER/pytest-N) and its parent stay even when they end up empty.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest


@pytest.hookimpl(trylast=True)  # after pytest's own clean-up of the passed tests' folders
def pytest_sessionfinish(session: pytest.Session) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    base: Path | None = getattr(factory, "_basetemp", None)
    if base is None or session.config.option.basetemp:
        return  # no temporary folder was made, or the user chose where they go
    with contextlib.suppress(OSError):  # not empty: a failed test's folder is kept on purpose
        base.rmdir()
    current = base.parent / "pytest-current"
    if current.is_symlink() and not current.exists():  # it pointed at the folder just removed
        current.unlink()
    with contextlib.suppress(OSError):  # other runs' folders, or other users' pytest runs
        base.parent.rmdir()

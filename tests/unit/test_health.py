"""What libvirt logged of a transient domain's end, the only trace it leaves once stopped."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from host import health

LOG = """\
2026-12-06 20:00:00.100+0000: starting up libvirt version: 9.0.0
2026-12-06 20:05:00.200+0000: shutting down, reason=shutdown
2026-12-06 22:08:56.978+0000: Domain id=12 is tainted: custom-argv
2026-12-06T22:09:17.352193Z qemu-system-x86_64: terminating on signal 15 from pid 4053
2026-12-06 22:09:18.954+0000: shutting down, reason=destroyed
"""


def epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S%z").timestamp()


def test_the_last_shutdown_since_the_lab_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "QEMU_LOG_DIR", tmp_path)
    (tmp_path / "sb-x-b.log").write_text(LOG)
    assert health.last_shutdown("sb-x-b", epoch("2026-12-06 22:00:00+0000")) == "destroyed"
    # an end logged before this lab started is another lab's of the same name
    assert health.last_shutdown("sb-x-b", epoch("2026-12-06 22:10:00+0000")) is None
    assert health.last_shutdown("sb-x-missing", 0.0) is None

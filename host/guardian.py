"""The guardian: a small process that cleans up after a lab owner that died without doing so.

libvirt's AUTODESTROY kills the domains when the owner's connection closes, but files (disk
overlays, the lab key, the state file) would stay. The owner starts this guardian in its own
session with a pipe on its stdin; when the pipe reaches EOF without the word `done` (the owner
was SIGKILLed, crashed, or lost its terminal), the guardian destroys any domain tagged with the
run, removes the run folder and the lab slot's lock file (the dead owner's flock is gone with it,
the file is not). Run as `python -m host.guardian RUN_DIR RUN_ID SLOT_LOCK`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

#: How long the guardian waits for the dead owner's slot lock to be released: the kernel closes
#: a dying process's files one by one, so the pipe's EOF may come just before the lock's close.
SLOT_RELEASE_WAIT_S = 5.0


class Guardian:
    """The owner's handle on its guardian."""

    def __init__(self, run_dir: Path, run_id: str, slot_lock: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.guardian", str(run_dir), run_id, str(slot_lock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def dismiss(self) -> None:
        """The owner cleaned up itself: tell the guardian to exit without acting."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"done\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=10)


def main(argv: list[str]) -> int:
    run_dir, run_id, slot_lock = Path(argv[0]), argv[1], Path(argv[2])
    said = sys.stdin.buffer.read()  # blocks until the owner writes `done` or dies
    if said.strip() == b"done":
        return 0
    from host.virt import connect, destroy_domain, tagged_domains

    try:
        conn = connect()
        for dom, _tag in tagged_domains(conn, run=run_id):
            destroy_domain(dom)
        conn.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        _remove_slot_lock(slot_lock)
    return 0


def _remove_slot_lock(path: Path) -> None:
    from host.slots import remove_if_unheld

    deadline = time.monotonic() + SLOT_RELEASE_WAIT_S
    while path.exists() and not remove_if_unheld(path) and time.monotonic() < deadline:
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

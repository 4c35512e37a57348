"""The guardian: a small process that cleans up after a lab owner that died without doing so.

libvirt's AUTODESTROY kills the domains when the owner's connection closes, but files (disk
overlays, the lab key, the state file) would stay. The owner starts this guardian in its own
session with a pipe on its stdin; when the pipe reaches EOF without the word `done` (the owner
was SIGKILLed, crashed, or lost its terminal), the guardian destroys any domain tagged with the
run and removes the run folder. Run as `python -m host.guardian RUN_DIR RUN_ID`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


class Guardian:
    """The owner's handle on its guardian."""

    def __init__(self, run_dir: Path, run_id: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host.guardian", str(run_dir), run_id],
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
    run_dir, run_id = Path(argv[0]), argv[1]
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

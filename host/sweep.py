"""Find and remove whatever any lab left behind, by tag: domains, keepers, run folders, slot
lock files nobody holds.

Domains are recognised by the stackbed tag in their libvirt <metadata>, whatever their name;
run folders by their place in the host-wide runtime folder. A lab whose owner still runs is left
alone unless `force` is given (then its owner is stopped first).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass, field

from host.lab import LabState
from host.paths import labs_dir
from host.slots import remove_unheld_slots
from host.virt import connect, destroy_domain, tagged_domains


@dataclass
class SweepReport:
    domains: list[str] = field(default_factory=list)
    owners_stopped: list[int] = field(default_factory=list)
    run_dirs: list[str] = field(default_factory=list)
    slot_locks: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def stop_owner(pid: int, timeout: float = 60.0) -> bool:
    """SIGTERM a lab owner and wait for its teardown; SIGKILL if it does not finish."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True


def sweep(lab: str | None = None, force: bool = False) -> SweepReport:
    report = SweepReport()
    live_runs: set[str] = set()
    if labs_dir().exists():
        for run_dir in sorted(labs_dir().iterdir()):
            if lab is not None and run_dir.name != lab:
                continue
            state = LabState.load(run_dir.name)
            if state is not None and state.owner_alive() and state.owner_pid != os.getpid():
                if not force:
                    report.kept.append(run_dir.name)
                    live_runs.add(state.run_id)
                    continue
                if stop_owner(state.owner_pid):
                    report.owners_stopped.append(state.owner_pid)
            shutil.rmtree(run_dir, ignore_errors=True)
            report.run_dirs.append(str(run_dir))
    conn = connect()
    try:
        for dom, tag in tagged_domains(conn, lab=lab):
            if tag.run in live_runs:
                continue
            name = dom.name()
            destroy_domain(dom)
            report.domains.append(name)
    finally:
        conn.close()
    # Any lab's: a lock file nobody holds belongs to no lab, whatever name it records.
    report.slot_locks = [str(path) for path in remove_unheld_slots()]
    return report

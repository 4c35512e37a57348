"""Host CPU sets for pinning a node's vCPUs (libvirt's `<vcpu cpuset=...>`).

Pinning is there to narrow the spread between rounds: a vCPU thread that the host scheduler
moves between cores, or that shares a core with another guest's, makes a round's figure depend
on where it happened to run. A lab file may give each node a set of host CPUs, in libvirt's
own syntax restricted to what needs no explanation: CPU numbers and ranges, comma-separated
("0", "0-1", "0,2"). The set must name CPUs this host has and may use, which is checked when the
lab file is read, before anything starts.
"""

from __future__ import annotations

import os
import re

_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


def parse(text: str) -> tuple[int, ...]:
    """'0,2-3' -> (0, 2, 3); ValueError with the reason for anything else."""
    if not _CPUSET.fullmatch(text):
        raise ValueError(f"{text!r} is not a CPU set: CPU numbers and ranges, such as 0 or 0-1,2")
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def usable() -> frozenset[int]:
    """The host CPUs this process (and so the QEMU it starts) may run on."""
    return frozenset(os.sched_getaffinity(0))


def check(text: str) -> str:
    """A CPU set naming only usable CPUs, returned as written."""
    cpus = parse(text)
    have = usable()
    missing = [cpu for cpu in cpus if cpu not in have]
    if missing:
        names = ", ".join(map(str, missing))
        raise ValueError(f"host CPU {names} not available here (usable: {spans(have)})")
    return text


def spans(cpus: frozenset[int] | tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> '0-2,5': the short form, for messages and the result metadata."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)

"""What a lab can leave behind on the host, so that tests can assert there is nothing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from host.paths import labs_dir, slots_dir
from host.slots import tcp_port_free
from host.virt import connect, tagged_domains


def domains_of(lab: str) -> list[str]:
    conn = connect()
    try:
        return [dom.name() for dom, _tag in tagged_domains(conn, lab=lab)]
    finally:
        conn.close()


def qemu_processes_of(lab: str) -> list[str]:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "qemu-system" in line and f"sb-{lab}-" in line]


def guardian_processes_of(run_dir: str) -> list[str]:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "host.guardian" in line and run_dir in line]


def slot_locks_of(lab: str) -> list[str]:
    """Slot lock files that name `lab`: after its teardown, even an unheld one is a leak."""
    found = []
    for path in slots_dir().glob("*.lock"):
        try:
            words = path.read_text().split()
        except FileNotFoundError:
            continue
        if words[:1] == [lab]:
            found.append(str(path))
    return found


def leftovers(lab: str, ports: list[int], run_dir: str | None = None) -> dict[str, list]:
    """Everything still there for `lab`; an empty dict means a clean host."""
    found = {
        "domains": domains_of(lab),
        "qemu": qemu_processes_of(lab),
        "ports": [p for p in ports if not tcp_port_free(p)],
        "run_dir": [str(labs_dir() / lab)] if (labs_dir() / lab).exists() else [],
        "guardians": guardian_processes_of(run_dir or str(labs_dir() / lab)),
        "overlays": [str(p) for p in Path(run_dir or labs_dir() / lab).glob("*.qcow2")],
        "slot_locks": slot_locks_of(lab),
    }
    return {k: v for k, v in found.items() if v}


def wait_clean(lab: str, ports: list[int], run_dir: str, timeout: float = 60) -> dict:
    """`leftovers()` once there are none, or what is still there after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(lab, ports, run_dir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)

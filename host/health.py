"""What became of a lab's guests when their SSH sessions break: libvirt's word on each domain.

A guest that dies mid-run (its QEMU killed, `virsh destroy`, a kernel panic) shows up as a
broken SSH session in whatever experiment is running. Asking libvirt turns that into an error
a user can act on: which node, what libvirt says happened to its domain, and where its
console log is.
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime
from pathlib import Path

import libvirt

from host.lab import LabState
from host.virt import connect

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "in no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}

_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "the guest shut down",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed (virsh destroy or a kill)",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "the guest crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "QEMU failed",
}


def domain_condition(dom: libvirt.virDomain) -> str | None:
    """What libvirt says of a domain that is not running normally; None if it runs."""
    state, reason = dom.state()
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return None
    text = _STATES.get(state, f"in state {state}")
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason in _SHUTOFF_REASONS:
        text += f": {_SHUTOFF_REASONS[reason]}"
    return text


#: Where libvirt's QEMU driver logs each domain's start and end ("shutting down, reason=...").
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
_SHUTDOWN = re.compile(r"^(\S+ \S+): shutting down, reason=(\w+)", re.M)


def last_shutdown(domain: str, since: float) -> str | None:
    """What libvirt logged of a domain's end after `since` (epoch seconds): a transient
    domain leaves no other trace once stopped. None if it logged nothing since."""
    try:
        text = (QEMU_LOG_DIR / f"{domain}.log").read_text(errors="replace")
    except OSError:
        return None
    for stamp, reason in reversed(_SHUTDOWN.findall(text)):
        try:
            when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
        except ValueError:
            continue
        if when >= since:
            return reason
    return None


def lost_nodes(state: LabState) -> dict[str, str]:
    """Each node whose domain is gone or not running, with a message naming the node, what
    libvirt says and the console log's path."""
    out: dict[str, str] = {}
    conn = connect()
    try:
        for node in state.nodes:
            try:
                condition = domain_condition(conn.lookupByName(node.domain))
            except libvirt.libvirtError:
                reason = last_shutdown(node.domain, state.created)
                condition = (
                    f"shut off: {reason} (libvirt's log; the domain is gone)"
                    if reason
                    else "gone (libvirt knows no such domain)"
                )
            if condition is not None:
                out[node.name] = (
                    f"node {node.name} lost: libvirt says domain {node.domain} is {condition}; "
                    f"console log: {node.console_log}"
                )
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    return out

"""Two throwaway network namespaces joined by a veth pair, for device tests and benchmarks.

Both ends live in namespaces made here, so frames sent on them can reach nothing else on the
machine; IPv6 is disabled on them before they come up, so the kernel sends nothing of its own
(no router solicitations, no MLD reports) and the link carries only what a test puts on it.
No IP address is configured: the device layer needs none. Names carry a random suffix (and
the `sbdev` prefix, for spotting leftovers), and the namespaces are deleted on the way out of
`veth_pair()` whatever happened inside, which also destroys the veth.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

PREFIX = "sbdev"


@dataclass(frozen=True, slots=True)
class VethPair:
    """Namespace and interface names of both ends, and the interfaces' MACs (text form)."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    mac_a: str
    mac_b: str


def parse_snmp(text: str) -> dict[str, int]:
    """`/proc/net/snmp` or `/proc/net/netstat` as {"TcpExt.TCPTimeouts": n, ...}: each group
    is a line of names followed by a line of values, both prefixed with the group."""
    counters: dict[str, int] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        group, _, keys = names.partition(":")
        group2, _, numbers = values.partition(":")
        if group != group2:
            raise ValueError(f"unpaired lines for {group!r} and {group2!r}")
        for key, number in zip(keys.split(), numbers.split(), strict=True):
            counters[f"{group}.{key}"] = int(number)
    return counters


def snmp_counters(ns: str) -> dict[str, int]:
    """Namespace `ns`'s kernel counters now (snmp and netstat are per namespace), as
    `Tcp.RetransSegs`, `TcpExt.TCPTimeouts`, ..."""
    text = subprocess.run(
        ns_cmd(ns, ["cat", "/proc/net/snmp", "/proc/net/netstat"]),
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    return parse_snmp(text)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


def ns_cmd(ns: str, argv: Sequence[str]) -> list[str]:
    """`argv` to run inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def run(argv: Sequence[str]) -> str:
    """Run `argv` (an `ip`/`ethtool`/... command) and return its output; raise on failure."""
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def link_mac(ns: str, iface: str) -> str:
    """The MAC of `iface` in namespace `ns` (text form)."""
    info = json.loads(run(["ip", "-n", ns, "-j", "link", "show", "dev", iface]))
    return str(info[0]["address"])


def quiet_up(ns: str, iface: str, mtu: int | None) -> None:
    """Bring `iface` in `ns` up (optionally with `mtu`) with IPv6 disabled first, so that the
    kernel puts nothing of its own on the link."""
    for key in ("all", "default", iface):
        path = f"net/ipv6/conf/{key}/disable_ipv6"
        # Best effort: a kernel without IPv6 has nothing to silence.
        subprocess.run(ns_cmd(ns, ["sysctl", "-qw", f"{path}=1"]), capture_output=True, check=False)
    if mtu is not None:
        run(["ip", "-n", ns, "link", "set", "dev", iface, "mtu", str(mtu)])
    run(["ip", "-n", ns, "link", "set", "dev", iface, "up"])


@contextmanager
def veth_pair(mtu: int | None = None) -> Iterator[VethPair]:
    """Create namespaces `sbdev-XXXXXX-a`/`-b` with veth `sbdevXXXXXXa` <-> `sbdevXXXXXXb`
    (both up, optionally with `mtu`), yield their names, delete everything afterwards."""
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"{PREFIX}-{tag}-a", f"{PREFIX}-{tag}-b"
    if_a, if_b = f"{PREFIX}{tag}a", f"{PREFIX}{tag}b"
    try:
        run(["ip", "netns", "add", ns_a])
        run(["ip", "netns", "add", ns_b])
        peer = ["peer", "name", if_b, "netns", ns_b]
        run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", *peer])
        quiet_up(ns_a, if_a, mtu)
        quiet_up(ns_b, if_b, mtu)
        yield VethPair(ns_a, ns_b, if_a, if_b, link_mac(ns_a, if_a), link_mac(ns_b, if_b))
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def leftovers() -> list[str]:
    """Namespaces with our prefix that still exist (for tests that check cleanup)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(PREFIX)]

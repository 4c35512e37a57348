"""Three throwaway network namespaces in a row: A —veth— M —veth— B, for links with a middle box.

`netns.veth_pair()` joins two namespaces directly; a link with impairments needs something in
between that the ends cannot see, such as the user-space relay (`guest.tools.relay`), because
this host's kernel has no netem. M holds both inner ends of the two veth pairs and nothing
else, so whatever runs there decides what crosses between A and B.

Names follow `netns.veth_pair()`: namespaces `sbdev-TAG-a`/`-m`/`-b` and interfaces
`sbdevTAGa`, `sbdevTAGma`, `sbdevTAGmb`, `sbdevTAGb` (15 characters at most, the kernel's
limit), so `netns.leftovers()` finds anything a crashed run left. Every interface comes up
with IPv6 disabled first, so the link carries only what a test puts on it. The namespaces this
call made are deleted on the way out whatever happened, which destroys the veths with them
once no process is left inside: stop what you started in them before leaving the block.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from guest.testing.netns import PREFIX, link_mac, ns_cmd, quiet_up, run

#: Everything that can turn wire frames into something else between a veth and its reader:
#: checksums left to "hardware" (tx), checksums trusted rather than verified (rx), and
#: segmentation / receive merging (frames larger than the MTU).
OFFLOADS = ("tx", "rx", "tso", "gso", "gro")


@dataclass(frozen=True, slots=True)
class VethChain:
    """Names of the three namespaces, the four interfaces, and the two ends' MACs (text)."""

    ns_a: str
    ns_m: str
    ns_b: str
    #: A's interface, facing M.
    if_a: str
    #: M's interfaces: the one facing A and the one facing B.
    if_ma: str
    if_mb: str
    #: B's interface, facing M.
    if_b: str
    mac_a: str
    mac_b: str


def offloads_off(ns: str, iface: str) -> None:
    """Turn off every offload in `OFFLOADS` on `iface`, so frames are complete on the wire.

    veth leaves checksums partial and segments unsplit when the sender's offloads are on, and
    marks frames as checksum-verified for a receiver whose rx offload is on; a relay in between
    would then forward frames no real wire carries, and corruption would go unnoticed.
    """
    argv = ["ethtool", "-K", iface]
    for feature in OFFLOADS:
        argv += [feature, "off"]
    run(ns_cmd(ns, argv))


@contextmanager
def veth_chain(mtu: int | None = None, middle_offloads: bool = False) -> Iterator[VethChain]:
    """Create A —veth— M —veth— B (every interface up, optionally with `mtu`), yield the names,
    delete the namespaces afterwards. M's two interfaces get their offloads turned off (needs
    `ethtool`) unless `middle_offloads`, since a relay there must read and write wire frames."""
    tag = secrets.token_hex(3)
    ns_a, ns_m, ns_b = (f"{PREFIX}-{tag}-{end}" for end in ("a", "m", "b"))
    if_a, if_ma, if_mb, if_b = (f"{PREFIX}{tag}{end}" for end in ("a", "ma", "mb", "b"))
    made: list[str] = []
    try:
        for ns in (ns_a, ns_m, ns_b):
            run(["ip", "netns", "add", ns])
            made.append(ns)
        links = ((if_a, ns_a, if_ma, ns_m), (if_mb, ns_m, if_b, ns_b))
        for left, ns_left, right, ns_right in links:
            peer = ["peer", "name", right, "netns", ns_right]
            run(["ip", "link", "add", left, "netns", ns_left, "type", "veth", *peer])
        for ns, iface in ((ns_a, if_a), (ns_m, if_ma), (ns_m, if_mb), (ns_b, if_b)):
            quiet_up(ns, iface, mtu)
        if not middle_offloads:
            offloads_off(ns_m, if_ma)
            offloads_off(ns_m, if_mb)
        yield VethChain(
            ns_a, ns_m, ns_b, if_a, if_ma, if_mb, if_b, link_mac(ns_a, if_a), link_mac(ns_b, if_b)
        )
    finally:
        # Only the namespaces made here: a name that already existed belongs to someone else.
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

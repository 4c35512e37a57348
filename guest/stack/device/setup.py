"""Take a NIC away from the kernel's IP stack for the user-level stack, and give it back.

A packet socket sees every frame, but the kernel still processes them too. If the kernel had
an address on the NIC, or answered ARP on it for its other addresses, it would reply to the
peer alongside our stack (an RST for every TCP segment it does not know, a second ARP reply).
So `take_over()`:

* removes the interface's IPv4 addresses (and with them its connected routes);
* sets `net.ipv4.conf.IF.arp_ignore=8` (never answer ARP on it, whatever the address) and
  `net.ipv6.conf.IF.disable_ipv6=1` (no link-local address, no RS/NS/MLD traffic);
* brings the link up;
* sets the offloads on purpose with `ethtool -K`: all off for a stack that reads plain
  frames (GRO would hand it frames larger than the MTU, which it cannot take), or TSO, GSO,
  GRO and checksum offload on together for one that speaks PACKET_VNET_HDR (wire/vnet.py);
  receive checksumming, once on, stays on (`KEPT_ON`).

The returned `TakeOver` remembers what it changed and `restore()` puts it back: offloads,
sysctls, IPv4 addresses, the routes through the interface that were not the kernel's own, and
the link state. IPv6 addresses are not restored beyond what the kernel autoconfigures.

Runs `ip`, `sysctl` and `ethtool` (iproute2, procps and ethtool are in the guest image); needs
root.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: ethtool -K short name -> the name `ethtool -k` prints. "all off" turns off all of them.
FEATURES: dict[str, str] = {
    "rx": "rx-checksumming",
    "tx": "tx-checksumming",
    "sg": "scatter-gather",
    "tso": "tcp-segmentation-offload",
    "gso": "generic-segmentation-offload",
    "gro": "generic-receive-offload",
    "lro": "large-receive-offload",
}
#: With offloads on: what vnet_hdr needs (TSO needs SG and TX checksumming). LRO stays off:
#: it merges frames in ways GRO does not (and breaks forwarding).
OFFLOADS_ON: dict[str, bool] = {
    "rx": True,
    "tx": True,
    "sg": True,
    "tso": True,
    "gso": True,
    "gro": True,
    "lro": False,
}
#: Features that must end up off when offloads are off: they hand up frames above the MTU.
MUST_BE_OFF = ("gro", "lro")
#: Features left on when the stack does not want them, because they change nothing it sees
#: and changing them costs. Receive checksumming only marks the frames the NIC verified: a
#: stack reading plain frames verifies every checksum itself, and a vnet_hdr one may trust a
#: mark the NIC set. But switching it resets an e1000, whose link is then down for 2 s: the
#: first frames of a run (an ARP request, a SYN) were lost, and the kernel path after it met
#: a link going down again on restore.
KEPT_ON = ("rx",)


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done


def _sysctl_path(iface: str, family: str, key: str) -> str:
    # Slash form: works for names containing dots (eth0.100), unlike the dotted form.
    return f"net/{family}/conf/{iface}/{key}"


def read_features(iface: str) -> dict[str, tuple[bool, bool]]:
    """`ethtool -k` as {name: (on, fixed)} for the features in FEATURES."""
    out = _run(["ethtool", "-k", iface]).stdout
    wanted = set(FEATURES.values())
    found: dict[str, tuple[bool, bool]] = {}
    for line in out.splitlines():
        name, sep, rest = line.strip().partition(":")
        if not sep or name not in wanted:
            continue
        words = rest.split()
        if words:
            found[name] = (words[0] == "on", "[fixed]" in rest)
    return found


@dataclass
class TakeOver:
    """What `take_over()` changed on `iface`; `restore()` undoes it (once)."""

    iface: str
    was_up: bool
    addresses: list[dict[str, Any]]
    routes: list[dict[str, Any]]
    sysctls: dict[str, str]
    #: ethtool short name -> previous state, for the features that were changed.
    features: dict[str, bool]
    #: ethtool short name -> wanted state, for features that did not take it (fixed ones).
    unchanged: dict[str, bool] = field(default_factory=dict)
    restored: bool = False

    def restore(self) -> None:
        """Put everything back; tries every step and raises at the end if any failed."""
        if self.restored:
            return
        self.restored = True
        errors: list[str] = []

        def attempt(argv: list[str]) -> None:
            done = _run(argv, check=False)
            if done.returncode != 0:
                errors.append(f"`{' '.join(argv)}`: {done.stderr.strip()}")

        for name, on in self.features.items():
            attempt(["ethtool", "-K", self.iface, name, "on" if on else "off"])
        for path, value in self.sysctls.items():
            attempt(["sysctl", "-qw", f"{path}={value}"])
        for addr in self.addresses:
            argv = ["ip", "-4", "addr", "add", f"{addr['local']}/{addr['prefixlen']}"]
            if "broadcast" in addr:
                argv += ["broadcast", addr["broadcast"]]
            if addr.get("label") and addr["label"] != self.iface:
                argv += ["label", addr["label"]]
            attempt([*argv, "dev", self.iface])
        if not self.was_up:
            attempt(["ip", "link", "set", "dev", self.iface, "down"])
        else:
            for route in self.routes:
                attempt(_route_add_argv(route, self.iface))
        if errors:
            raise RuntimeError(f"restoring {self.iface} failed: " + "; ".join(errors))

    def __enter__(self) -> TakeOver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _route_add_argv(route: dict[str, Any], iface: str) -> list[str]:
    argv = ["ip", "-4", "route", "add", route["dst"]]
    if "gateway" in route:
        argv += ["via", route["gateway"]]
    argv += ["dev", iface]
    for key, opt in (("protocol", "proto"), ("scope", "scope"), ("prefsrc", "src")):
        if key in route:
            argv += [opt, str(route[key])]
    if "metric" in route:
        argv += ["metric", str(route["metric"])]
    return argv


def take_over(iface: str, offloads: bool | Mapping[str, bool]) -> TakeOver:
    """Hand `iface` to the user-level stack (see module docstring); returns the undo record.

    `offloads`: True for `OFFLOADS_ON`, False for all off, or a map of ethtool short names
    (`FEATURES`) to the wanted state, for a stack that uses only some of them (one lever at a
    time, in a benchmark); features it leaves out are turned off.
    Raises RuntimeError if GRO/LRO cannot be turned off when they are not wanted: the stack
    would then receive frames it cannot take. Other features that refuse to change (fixed on
    this NIC) are listed in `TakeOver.unchanged`.
    """
    wanted = _wanted_features(offloads)
    link = json.loads(_run(["ip", "-j", "link", "show", "dev", iface]).stdout)[0]
    was_up = "UP" in link.get("flags", [])
    info = json.loads(_run(["ip", "-j", "-4", "addr", "show", "dev", iface]).stdout)
    addresses = [a for entry in info for a in entry.get("addr_info", [])]
    routes = [
        r
        for r in json.loads(_run(["ip", "-j", "-4", "route", "show", "dev", iface]).stdout)
        if r.get("protocol") != "kernel"
    ]
    sysctls: dict[str, str] = {}
    wanted_sysctls = {_sysctl_path(iface, "ipv4", "arp_ignore"): "8"}
    v6 = _sysctl_path(iface, "ipv6", "disable_ipv6")
    if _run(["sysctl", "-n", v6], check=False).returncode == 0:
        wanted_sysctls[v6] = "1"
    for path in wanted_sysctls:
        sysctls[path] = _run(["sysctl", "-n", path]).stdout.strip()

    record = TakeOver(iface, was_up, addresses, routes, sysctls, {})
    try:
        for path, value in wanted_sysctls.items():
            _run(["sysctl", "-qw", f"{path}={value}"])
        _run(["ip", "-4", "addr", "flush", "dev", iface])
        _run(["ip", "link", "set", "dev", iface, "up"])
        _set_offloads(record, wanted)
    except BaseException:
        record.restore()
        raise
    return record


def _wanted_features(offloads: bool | Mapping[str, bool]) -> dict[str, bool]:
    """Every feature of `FEATURES` with its wanted state (see `take_over`)."""
    if isinstance(offloads, bool):
        return dict(OFFLOADS_ON) if offloads else dict.fromkeys(FEATURES, False)
    unknown = set(offloads) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown offload features: {', '.join(sorted(unknown))}")
    return {**dict.fromkeys(FEATURES, False), **offloads}


def _set_offloads(record: TakeOver, wanted: dict[str, bool]) -> None:
    before = read_features(record.iface)
    for short, on in wanted.items():
        state = before.get(FEATURES[short])
        if state is None or state[0] == on or (state[0] and short in KEPT_ON):
            continue
        if state[1]:  # fixed: ethtool cannot change it
            record.unchanged[short] = on
            continue
        # One feature per call: a NIC refusing one must not stop the others.
        _run(["ethtool", "-K", record.iface, short, "on" if on else "off"], check=False)
        record.features[short] = state[0]
    after = read_features(record.iface)
    for short, on in wanted.items():
        state = after.get(FEATURES[short])
        if state is not None and state[0] != on and not (state[0] and short in KEPT_ON):
            record.unchanged[short] = on
            record.features.pop(short, None)  # not changed, nothing to restore
    stuck = [s for s in MUST_BE_OFF if not wanted[s] and s in record.unchanged]
    if stuck:
        raise RuntimeError(
            f"{record.iface}: cannot turn off {', '.join(stuck)}: frames above the MTU "
            "would reach the stack"
        )


def _sysfs_int(iface: str, name: str) -> int:
    with open(f"/sys/class/net/{iface}/{name}") as f:
        return int(f.read())


def receive_checksums_on(ifaces: Sequence[str], timeout: float) -> list[str]:
    """Turn receive checksumming on for `ifaces` (a NIC where it is fixed off is left so) and
    wait until each one switched has had its link down and up again: an e1000 resets on the
    switch and is back ~2 s later. Returns the interfaces switched; raises RuntimeError if
    one's carrier is not back within `timeout` seconds. Run once at a lab's bring-up, so that
    no take-over switches it again (`KEPT_ON`)."""
    name = FEATURES["rx"]
    off = [i for i in ifaces if read_features(i).get(name, (True, True)) == (False, False)]
    changes = {i: _sysfs_int(i, "carrier_changes") for i in off}
    for iface in off:
        _run(["ethtool", "-K", iface, "rx", "on"], check=False)
    switched = [i for i in off if read_features(i).get(name, (False, False))[0]]
    deadline = time.monotonic() + timeout
    for iface in switched:
        while not (
            _sysfs_int(iface, "carrier_changes") >= changes[iface] + 2
            and _sysfs_int(iface, "carrier") == 1
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{iface}: no carrier {timeout:g} s after rx checksumming")
            time.sleep(0.05)
    return switched

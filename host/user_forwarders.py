"""The forwarding modes built on our own user-level code (the BU TR 2004-009 half of stackbed):

* `extension`: the forwarding extension (`python3 -m guest.stack.extension`) on every middle:
  a supervisor started as root takes both NICs from the kernel and runs a confined extension
  that moves frames between their PACKET_MMAP rings, doing IPv4 forwarding itself. It does not
  terminate anything: the client connects to the server's address and the ends' routes
  through the middle's addresses hold, since the extension answers ARP for them. Each middle
  is given the route's other subnets (`--route`) towards its neighbours.
* `stack-proxy-mono`, `stack-proxy-factored`: the stack proxy (`python3 -m
  guest.tools.stack_proxy`) on every middle: our user-level stack on both NICs at the middle's
  addresses, terminating each connection and relaying the bytes, the relay in the monolithic
  process or as the factored stacks' confined application domain. The client connects to the
  first middle, as with the kernel-socket proxies.

Both take over the middle's experiment NICs for the run (the kernel's addresses, routes and
settings are put back when the program stops); the guest's management link, SSH, is not one
of them.
"""

from __future__ import annotations

from host.experiments.base import BenchError
from host.middles import (
    DaemonForwarder,
    Middle,
    Transit,
    daemon_command,
    per_second,
    relayed_figures,
)
from host.ssh import CommandResult

__all__ = ["ExtensionForwarder", "StackProxyForwarder", "extension_figures", "stack_proxy_figures"]

#: The extension's counters that are frames it dropped: its engine's
#: (guest/stack/forward/engine.py) and its loop's (a full TX ring, guest/stack/extension/pump.py).
ENGINE_DROPS = (
    "bad_frame",
    "oversized",
    "bad_header",
    "bad_checksum",
    "options_dropped",
    "bad_fragment",
    "martian_source",
    "martian_dest",
    "no_route",
    "ttl_expired",
    "frag_needed",
    "bad_gso",
    "gso_too_big",
    "queue_drops",
    "tx_ring_full",
)


def _nic(middle: Middle, side: str) -> str:
    nic = getattr(middle, side).nic
    if nic is None:
        raise BenchError(f"{middle.node}: the NIC of its {side} link is not known")
    return nic


def extension_routes(transit: Transit, index: int) -> list[tuple[str, str]]:
    """(subnet, gateway) for each subnet of the route that the `index`-th middle is not on:
    those towards the client through the previous middle, those towards the server through
    the next hop."""
    middles = transit.middles
    middle = middles[index]
    towards_client = [
        (m.upstream.network, middles[index - 1].downstream.ip) for m in middles[:index]
    ]
    towards_server = [(m.downstream.network, middle.next_ip) for m in middles[index + 1 :]]
    return towards_client + towards_server


def extension_command(transit: Transit, index: int, offloads: bool = False) -> str:
    middle = transit.middles[index]
    up, down = _nic(middle, "upstream"), _nic(middle, "downstream")
    args = [
        f"--iface {up} --iface {down}",
        f"--addr {up}={middle.upstream.cidr} --addr {down}={middle.downstream.cidr}",
        *(f"--route {net} via {gw}" for net, gw in extension_routes(transit, index)),
        *(["--offloads"] if offloads else []),
    ]
    return daemon_command("extension", transit.port, "guest.stack.extension " + " ".join(args))


def extension_figures(base: dict, stopped: dict) -> dict:
    """The extension's figures: the frames and bytes it forwarded (per second over the window),
    what was dropped (by the engine, and by the kernel's rings before the extension saw it),
    system calls and copies per frame from its own counters, and its restarts; the kernel's
    own forwarded datagrams stay as `kernel_forwarded_packets` (0 when the kernel kept out)."""
    stats = stopped["stats"]
    ext, per_frame = stats["extension"], stats["per_frame"]
    seconds = base["seconds"]
    frames, nbytes = ext.get("forwarded", 0), ext.get("bytes_forwarded", 0)
    ring_drops = sum(k.get("rx_dropped", 0) for k in stats.get("kernel", {}).values())
    syscalls = ext.get("poll_wakeups", 0) + ext.get("tx_kicks", 0)
    return {
        **base,
        "kernel_forwarded_packets": base["forwarded_packets"],
        "forwarded_packets": frames,
        "forwarded_packets_per_s": per_second(frames, seconds),
        "relayed_bytes": nbytes,
        "relayed_bytes_per_s": per_second(nbytes, seconds),
        # With offloads a forwarded packet may be a GRO super-frame: these are the segments.
        "super_frames": ext.get("gso_forwarded", 0),
        "wire_segments_per_s": per_second(
            frames - ext.get("gso_forwarded", 0) + ext.get("gso_segments", 0), seconds
        ),
        "drops": sum(ext.get(k, 0) for k in ENGINE_DROPS) + ring_drops,
        "ring_drops": ring_drops,
        "syscalls": syscalls,
        "syscalls_per_mb": round(syscalls / (nbytes / 1e6), 2) if nbytes else None,
        "syscalls_per_frame": per_frame["syscalls_per_frame"],
        "copies_per_frame": round(
            per_frame["slot_copies_per_frame"] + per_frame["engine_copies_per_frame"], 4
        ),
        "restarts": stats.get("restarts", 0),
        "extension": stats,
    }


class ExtensionForwarder(DaemonForwarder):
    """The forwarding extension on every middle (see the module's docstring); with
    `offloads`, GRO and TSO on the middles' NICs and super-frames through the engine."""

    name = "extension"

    def __init__(self, transit: Transit, offloads: bool = False) -> None:
        super().__init__(transit)
        self.offloads = offloads

    def command(self, middle: Middle, index: int) -> str:
        return extension_command(self.transit, index, self.offloads)

    def figures(self, middle: Middle, base: dict, stopped: dict, result: CommandResult) -> dict:
        return extension_figures(base, stopped)


def stack_proxy_command(path: str, middle: Middle, port: int) -> str:
    args = (
        f"--path {path} --listen-iface {_nic(middle, 'upstream')} "
        f"--listen-addr {middle.upstream.cidr} --port {port} "
        f"--to-iface {_nic(middle, 'downstream')} --to-addr {middle.downstream.cidr} "
        f"--to {middle.next_ip}:{port}"
    )
    return daemon_command("stack-proxy", port, f"guest.tools.stack_proxy {args}")


def stack_proxy_figures(base: dict, stopped: dict) -> dict:
    """The stack proxy's figures: bytes relayed (both directions, per second over the window),
    the relay's calls on its sessions (reads and writes: ring operations, not system calls)
    per MB, the bytes through its buffer; its report under `proxy`."""
    return {
        **relayed_figures(
            base, stopped["stats"], "relay_calls", lambda d: d["reads"] + d["writes"]
        ),
        "proxy": stopped,
    }


class StackProxyForwarder(DaemonForwarder):
    """The stack proxy on `path` (mono or factored) on every middle, each relaying to the next."""

    name = "stack-proxy"
    terminates = True

    def __init__(self, transit: Transit, path: str) -> None:
        super().__init__(transit)
        self.path = path

    def command(self, middle: Middle, index: int) -> str:
        return stack_proxy_command(self.path, middle, self.transit.port)

    def figures(self, middle: Middle, base: dict, stopped: dict, result: CommandResult) -> dict:
        return stack_proxy_figures(base, stopped)

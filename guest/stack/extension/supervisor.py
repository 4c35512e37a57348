"""The extension's supervisor: takes the NICs from the kernel, sets up the rings, forks and
confines the extension, restarts it when it dies, reports.

`python3 -m guest.stack.extension --iface IF1 --iface IF2 --addr IF1=CIDR --addr IF2=CIDR
[--route SUBNET via GW]` (as root) makes this node an IPv4 router whose forwarding is done at
user level by a confined extension (the paper's design, `shared/REFERENCE.md`, BU TR 2004-009):

1. **keeps the kernel out of the way** on both NICs: `device.setup.take_over` (no IPv4
   addresses, so no local delivery and no connected routes; `arp_ignore=8`, so the kernel
   answers no ARP; IPv6 off; offloads off, so frames are MTU-sized, or with `--offloads`
   GRO, TSO and checksum offload on, as kernel forwarding has them), then
   `net.ipv4.conf.IF.forwarding=0`, so a kernel with `ip_forward` on still forwards nothing
   that arrives there (and sends no ICMP about it), and, when `tc` is there, a `clsact`
   ingress filter that drops every frame after the packet taps, so the kernel's IP and ARP
   code never even sees them (`"kernel_ingress"` in the ready line says which held). The
   ends route through the addresses given with `--addr`, which only the extension answers ARP
   for. Everything is put back on the way out (addresses, routes, sysctls, offloads, qdisc).
   Promiscuous mode is not needed: the extension uses the NICs' own MACs, and a NIC delivers
   frames to its MAC and broadcasts.
2. per NIC, opens a packet socket with PACKET_MMAP RX and TX rings (TPACKET_V2: a frame is
   visible as soon as it is written; with `--offloads`, PACKET_VNET_HDR too, so that a GRO
   super-frame arrives whole and leaves as one for TSO to cut again), an epoll fd that
   reports it readable, and a send-only io_uring over it (the factored stack's `SharedNic`
   and `SendRing`), maps the rings;
3. forks the **extension** (`fork_domain`), which keeps the mappings, the epoll fds and the
   io_urings and no socket, builds the `Forwarder` and its loop (`pump.ExtensionLoop`),
   then drops to its own uid with no capabilities, sets no_new_privs and loads its seccomp
   allowlist (`pump.EXTENSION`), and reports ready;
4. supervises: the extension reports its counters four times a second on its status pipe; when it
   dies (the pipe ends), the supervisor prints `{"event": "died", ...}`, closes that
   incarnation's sockets and rings (a new extension must start where the kernel's ring
   cursors are, and only fresh rings guarantee that), makes new ones and forks a new
   extension, then prints `{"event": "restarted", "outage_ms": ...}`: the time from the
   death to the new extension's ready line. Forwarding holds no connection state: the ends'
   TCP retransmits what was lost meanwhile; next hops are learnt again by ARP;
5. on SIGTERM or SIGINT stops the extension (it reports its final counters) and prints
   `{"event": "stopped", "stats": ...}`: the engine's and the loop's counters summed over
   every incarnation (a killed one counts up to its last report, at most 0.25 s old), the
   kernel's ring drops, and the per-frame costs (`pump.per_frame`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from guest.stack.device import abi
from guest.stack.device.setup import TakeOver, take_over
from guest.stack.factored import sandbox, uring
from guest.stack.factored.domains import Domain, LaunchError, fork_domain, report
from guest.stack.factored.shared import SharedNic, SharedRingDevice
from guest.stack.factored.uring import SendRing, UringTransmit
from guest.stack.forward import Forwarder, Interface, Route

from .attacks import ExtensionAttacks
from .pump import EXTENSION, ExtensionLoop, per_frame

#: Default uid (and gid) of the extension: an unused system id, no passwd entry needed.
EXTENSION_UID = 64903
READY_TIMEOUT_S = 10.0
#: An extension that dies this soon after starting, this many times in a row, is not restarted.
CRASH_LOOP_S, CRASH_LOOP_LIMIT = 1.0, 5
EXIT_GAVE_UP = 3
ROLE = "extension"


class Nic:
    """One NIC's rings for one incarnation of the extension (made as root, before the fork)."""

    def __init__(self, iface: str, vnet_hdr: bool) -> None:
        self.iface = iface
        self.shared = SharedNic(iface, 2, vnet_hdr)
        try:
            self.ring = SendRing(self.shared.sock.fileno())
        except BaseException:
            self.shared.close()
            raise
        self.layout = self.shared.layout

    def keep(self) -> list[int]:
        """The fds the extension keeps: the epoll fd and the io_uring (never the socket)."""
        assert self.shared.epoll is not None
        return [self.shared.epoll.fileno(), self.ring.fd]

    def drops(self) -> tuple[int, int]:
        """The kernel's (drops, ring-full) counts since the last read."""
        return abi.read_drops(self.shared.sock)

    def close(self) -> None:
        self.ring.close()
        self.shared.close()


def _sysctl(path: str, value: str | None = None) -> str:
    with open(f"/proc/sys/{path}", "r+" if value is not None else "r") as f:
        old = f.read().strip()
        if value is not None:
            f.seek(0)
            f.write(value)
    return old


class Supervisor:
    """Owns the NICs and the extension; `start`, then `supervise`, then `stop`, then `close`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.takeovers: list[TakeOver] = []
        self.sysctls: dict[str, str] = {}
        self.tc: list[str] = []
        self.nics: list[Nic] = []
        self.domain: Domain | None = None
        self.ready: dict[str, Any] = {}
        self.incarnations: list[dict[str, int]] = []  # the last counters of each, if any
        self.current: dict[str, int] = {}
        self.drops = {iface: [0, 0] for iface in args.iface}
        self.restarts = 0
        self.outages_ms: list[float] = []
        self._stop = False

    def request_stop(self, *_args: object) -> None:
        self._stop = True

    # -- the kernel out of the way ---------------------------------------------------------------

    def _quiet_kernel(self, iface: str) -> str:
        self.takeovers.append(take_over(iface, self.args.offloads))
        path = f"net/ipv4/conf/{iface}/forwarding"
        self.sysctls[path] = _sysctl(path, "0")
        if shutil.which("tc") is None:
            return "forwarding-off"
        add = subprocess.run(["tc", "qdisc", "add", "dev", iface, "clsact"], capture_output=True)
        if add.returncode != 0:
            return "forwarding-off"
        self.tc.append(iface)
        drop = ["tc", "filter", "add", "dev", iface, "ingress", "matchall", "action", "drop"]
        if subprocess.run(drop, capture_output=True).returncode != 0:
            return "forwarding-off"
        return "tc-drop"

    def _give_back(self) -> None:
        for iface in self.tc:
            subprocess.run(["tc", "qdisc", "del", "dev", iface, "clsact"], capture_output=True)
        self.tc.clear()
        for path, value in self.sysctls.items():
            with contextlib.suppress(OSError):
                _sysctl(path, value)
        self.sysctls.clear()
        for record in reversed(self.takeovers):
            with contextlib.suppress(RuntimeError):
                record.restore()
        self.takeovers.clear()

    # -- the extension ---------------------------------------------------------------------------

    def start(self) -> dict:
        args = self.args
        if args.confine and (why := sandbox.supported()) is not None:
            raise LaunchError(f"cannot confine the extension: {why} (or pass --no-confine)")
        if (why := uring.supported()) is not None:
            raise LaunchError(f"no io_uring for the extension's transmit: {why}")
        ingress = {iface: self._quiet_kernel(iface) for iface in args.iface}
        self._spawn()
        return {
            "event": "ready",
            "pid": os.getpid(),
            "ifaces": {
                nic.iface: {"mac": nic.layout.mac.hex(":"), "mtu": nic.layout.mtu}
                for nic in self.nics
            },
            "addr": dict(args.addr),
            "routes": [" ".join(r) for r in args.route],
            "kernel_ingress": ingress,
            "offloads": args.offloads,
            "extension": self.ready,
        }

    def _spawn(self) -> None:
        """New rings, a new extension on them; waits for its ready line."""
        self.nics = [Nic(iface, self.args.offloads) for iface in self.args.iface]
        views = [nic.shared.map_rings() for nic in self.nics]
        queues = [nic.ring.map_queues() for nic in self.nics]
        keep = [fd for nic in self.nics for fd in nic.keep()]
        body = _extension_body(self.args, self.nics, views, queues, os.getpid())
        try:
            self.domain = fork_domain(ROLE, body, keep)
        finally:
            for view in (*views, *queues):
                view.release()  # the extension has its own: the supervisor keeps no mapping
        line = self.domain.wait_for("ready", READY_TIMEOUT_S)
        if line is None or line.get("event") != "ready":
            self.domain.reap(1.0)
            why = line.get("error") if line else f"no answer ({self.domain.describe_exit()})"
            raise LaunchError(f"the extension did not start: {why}")
        self.ready = line
        self.current = {}
        self.domain.lines.clear()

    def _retire(self) -> None:
        """Keep the dead (or stopped) incarnation's counters, close its rings."""
        self.incarnations.append(self.current)  # empty if it died before its first report
        self.current = {}
        for nic in self.nics:
            with contextlib.suppress(OSError):
                drops, full = nic.drops()
                self.drops[nic.iface][0] += drops
                self.drops[nic.iface][1] += full
            nic.close()
        self.nics = []

    def _read(self, domain: Domain) -> bool:
        alive = domain.read()
        for line in domain.lines:
            event = line.get("event")
            if event in ("stats", "stopped"):
                self.current = line["stats"]
            elif event == "attacks":
                print(json.dumps(line), flush=True)
        domain.lines = [x for x in domain.lines if x.get("event") in ("error", "stopped")]
        return alive

    def supervise(self) -> None:
        """Until a stop is asked for; restarts the extension whenever it dies."""
        crashes = 0
        while not self._stop:
            domain = self.domain
            assert domain is not None
            ready, _, _ = select.select([domain.fd], [], [], 0.5)
            if not ready or self._read(domain):
                continue
            died_at = time.monotonic()
            domain.reap(1.0)
            errors = [x["error"] for x in domain.lines if x.get("event") == "error"]
            lived = died_at - self.ready.get("_started", died_at)
            print(json.dumps({
                "event": "died", "pid": domain.pid, "how": domain.describe_exit(),
                "error": errors[-1] if errors else None,
            }), flush=True)  # fmt: skip
            with contextlib.suppress(OSError):
                os.close(domain.fd)
            crashes = crashes + 1 if lived < CRASH_LOOP_S else 0
            if crashes >= CRASH_LOOP_LIMIT:
                raise LaunchError(f"the extension died {crashes} times within {CRASH_LOOP_S} s")
            self._retire()
            self._spawn()
            outage = round((time.monotonic() - died_at) * 1000, 1)
            self.ready["_started"] = time.monotonic()
            self.restarts += 1
            self.outages_ms.append(outage)
            print(json.dumps({
                "event": "restarted", "outage_ms": outage, "pid": self.ready["pid"],
                "confined": self.ready.get("confined"), "restarts": self.restarts,
            }), flush=True)  # fmt: skip

    def stop(self) -> dict:
        domain = self.domain
        if domain is not None and domain.exit_status is None:
            domain.signal(signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                ready, _, _ = select.select([domain.fd], [], [], 0.2)
                if ready and not self._read(domain):
                    break
            domain.reap(2.0)
        self._retire()
        return self.summary()

    def summary(self) -> dict:
        total: dict[str, int] = {}
        for counters in self.incarnations:
            for key, value in counters.items():
                total[key] = total.get(key, 0) + value
        return {
            "extension": total,
            "per_frame": per_frame(total),
            "kernel": {i: {"rx_dropped": d, "rx_ring_full": f} for i, (d, f) in self.drops.items()},
            "incarnations": len(self.incarnations),
            "restarts": self.restarts,
            "outages_ms": self.outages_ms,
        }

    def close(self) -> None:
        """Whatever happened: no extension left running, the NICs given back."""
        if self.domain is not None:
            self.domain.kill()
        for nic in self.nics:
            with contextlib.suppress(OSError):
                nic.close()
        self.nics = []
        self._give_back()


def _extension_body(
    args: argparse.Namespace,
    nics: list[Nic],
    views: list[memoryview],
    queues: list[memoryview],
    supervisor_pid: int,
):
    """The extension domain: everything it needs is built before it confines itself."""

    def body(status: int) -> None:
        devices = {}
        interfaces = []
        for nic, view, queue in zip(nics, views, queues, strict=True):
            transmit = UringTransmit(nic.ring.fd, nic.ring.layout, queue)
            epoll_fd = nic.keep()[0]
            devices[nic.iface] = SharedRingDevice(nic.layout, view, epoll_fd, transmit)
            interfaces.append(
                Interface.from_text(
                    nic.iface, nic.layout.mac.hex(":"), args.addr[nic.iface], nic.layout.mtu
                )
            )
        routes = [Route.from_text(subnet, via=gw) for subnet, _, gw in args.route]
        forwarder = Forwarder(interfaces, routes)
        loop = ExtensionLoop(
            forwarder, devices, lambda c: report(status, "stats", stats=c), vnet=args.offloads
        )
        signal.signal(signal.SIGTERM, loop.stop)
        if args.attackable:
            first = devices[nics[0].iface]
            ring = first.transmit
            assert isinstance(ring, UringTransmit)
            attacks = ExtensionAttacks([n.iface for n in nics], supervisor_pid, ring)

            def attack(*_args: object) -> None:
                report(status, "attacks", results=attacks.run_all())

            signal.signal(signal.SIGUSR1, attack)
        info: dict[str, Any] = {"confined": False}
        if args.confine:
            info = {"confined": True, **sandbox.confine(args.uid, args.uid, EXTENSION)}
        report(status, "ready", pid=os.getpid(), **info)
        loop.run()
        report(status, "stopped", stats=loop.counters())

    return body


def _addr(text: str) -> tuple[str, str]:
    iface, sep, cidr = text.partition("=")
    if not sep or "/" not in cidr:
        raise argparse.ArgumentTypeError(f"--addr wants IFACE=ADDR/PREFIX, not {text!r}")
    return iface, cidr


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python3 -m guest.stack.extension",
        description="A confined user-level IPv4 forwarding extension between two NICs "
        "(PACKET_MMAP rings, a send-only io_uring), supervised and restarted by root.",
    )
    ap.add_argument("--iface", action="append", required=True, help="a NIC (give two)")
    ap.add_argument(
        "--addr", action="append", type=_addr, required=True, help="IFACE=ADDR/PREFIX, per NIC"
    )
    ap.add_argument(
        "--route",
        action="append",
        nargs=3,
        default=[],
        metavar=("SUBNET", "via", "GATEWAY"),
        help="a static route beyond the connected subnets ('default' for 0.0.0.0/0)",
    )
    ap.add_argument(
        "--offloads",
        action="store_true",
        help="GRO, TSO and checksum offload on the NICs, frames with a virtio_net_hdr: one "
        "pass through the engine per GRO super-frame (as kernel forwarding does)",
    )
    ap.add_argument(
        "--uid", type=int, default=EXTENSION_UID, help=f"(and gid; default {EXTENSION_UID})"
    )
    ap.add_argument(
        "--no-confine",
        dest="confine",
        action="store_false",
        help="run the extension as root without seccomp (to measure what confinement costs)",
    )
    ap.add_argument("--attackable", action="store_true", help=argparse.SUPPRESS)  # tests only
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if len(set(args.iface)) != len(args.iface):
        ap.error("an --iface was given twice")
    args.addr = dict(args.addr)
    if set(args.addr) != set(args.iface):
        ap.error("give exactly one --addr IFACE=ADDR/PREFIX per --iface")
    for route in args.route:
        if route[1] != "via":
            ap.error(f"--route wants SUBNET via GATEWAY, not {' '.join(route)!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    supervisor = Supervisor(args)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    try:
        try:
            ready = supervisor.start()
            supervisor.ready["_started"] = time.monotonic()
            print(json.dumps(ready), flush=True)
            supervisor.supervise()
        except LaunchError as e:
            print(json.dumps({"event": "error", "error": str(e)}), flush=True)
            print(f"extension: {e}", file=sys.stderr)
            return EXIT_GAVE_UP
        stats = supervisor.stop()
        print(json.dumps({"event": "stopped", "stats": stats}, default=str), flush=True)
        return 0
    finally:
        supervisor.close()

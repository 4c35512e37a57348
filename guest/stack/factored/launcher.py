"""The factored stack's launcher: sets up the boundary, forks and confines the domains, supervises.

`python3 -m guest.stack.factored --iface eth1 --addr 198.18.1.1/24` (as root) does what the
monolithic stack does, split into protection domains after the EROS design
(`shared/REFERENCE.md`):

1. takes the NIC from the kernel (`device.setup.take_over`, root only);
2. sets up the driver<->protocol boundary (`--link`):
   * `uring` (default) and `shared` (`shared.py`): opens the packet socket with its
     PACKET_MMAP rings, an epoll fd watching it and the driver's eventfd doorbell; for
     `uring`, also the send-only io_uring over the socket (`uring.py`), restricted and
     enabled before anything is forked;
   * `copy` (`link.py`): two sealed memfds of frame rings and two eventfd doorbells;
3. forks the **driver domain**, which keeps the packet socket (`uring`, `shared`: the
   launcher's; `copy`: it opens its own), then drops to its own uid with no capabilities, sets
   no_new_privs and loads its seccomp allowlist (`sandbox.DRIVER`): from then on it can make
   the NIC transmit when rung (`shared.Kicker`; over `uring` nobody rings it, and it holds
   the socket and reads the kernel's drop counters) or move frames (`driver.DriverPump`), and
   nothing else;
4. forks the **protocol domain**, which creates the applications' UNIX socket, builds the
   same `mono.StackProcess` the monolithic stack runs, over the kernel's rings mapped without
   the socket (`shared.SharedRingDevice`, transmitting through the io_uring or the driver's
   doorbell) or over the link (`shmdev.ShmDevice`), and confines itself likewise
   (`sandbox.PROTOCOL`, or `PROTOCOL_URING` with the ring: no sockets, no files, no ptrace,
   no processes, no io_uring of its own);
5. closes its own copies of everything and supervises: a domain that dies is reported
   (`{"event": "domain-died", ...}` on stdout, exit status 3) and the others are stopped, so a
   crashed protocol domain never leaves a half stack behind. Applications see their sessions
   close. (Applications are domains of their own: `guest.traffic.appdomain`.)

Forking without exec is deliberate: the domains are this interpreter with every module already
imported, which matters because a confined domain cannot open a file (so cannot import).

Stopping (SIGTERM or SIGINT): the protocol domain lingers to
finish its close handshakes (through the still-running driver), reports its counters, then the
driver stops; the launcher gives the NIC back and prints `{"event": "stopped", "stats": ...}`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from guest.stack.device.base import Device
from guest.stack.device.ring import RingLayout
from guest.stack.mono import (
    DEFAULT_LINGER_S,
    StackProcess,
    add_stack_arguments,
    default_socket_path,
    open_device,
)
from guest.stack.nic import Offloads

from . import LINKS, SHARED_LINKS, sandbox
from .attacks import Attacks
from .driver import DriverPump
from .link import DRIVER, PROTOCOL, SUPER_FRAME, FrameLink, LinkGeometry
from .shared import DriverDoorbell, Kicker, SharedNic, SharedRingDevice, Transmitter
from .shmdev import ShmDevice
from .uring import SendRing, UringTransmit

#: Default uids (and gids) of the domains: unused system ids, no passwd entry needed.
DRIVER_UID = 64901
PROTOCOL_UID = 64902
READY_TIMEOUT_S = 30.0
EXIT_DOMAIN_DIED = 3


class LaunchError(Exception):
    """A domain did not come up; the message says which and why."""


def _report(fd: int, event: str, **fields: Any) -> None:
    """One JSON line to the launcher (a plain write: allowed under every policy)."""
    data = (json.dumps({"event": event, **fields}, default=str) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


class Domain:
    """A forked domain, seen from the launcher: its pid and the pipe it reports on."""

    def __init__(self, role: str, pid: int, status_fd: int) -> None:
        self.role = role
        self.pid = pid
        self.fd = status_fd
        self._buf = b""
        self.lines: list[dict] = []
        self.exit_status: int | None = None

    def read(self) -> bool:
        """Read what the domain reported; False at EOF (it exited or closed its pipe)."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self._buf += chunk
        *complete, self._buf = self._buf.split(b"\n")
        for line in complete:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))
        return True

    def wait_for(self, event: str, timeout: float) -> dict | None:
        """The first report `event` (or "error"), reading up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        open_ = True
        while True:
            found = next((x for x in self.lines if x.get("event") in (event, "error")), None)
            left = deadline - time.monotonic()
            if found is not None or not open_ or left <= 0:
                return found
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                open_ = self.read()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def reap(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for the exit; the wait status, or None if still running."""
        deadline = time.monotonic() + timeout
        while self.exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = status
                break
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return self.exit_status

    def describe_exit(self) -> str:
        if self.exit_status is None:
            return "running"
        return sandbox.describe_wait_status(self.exit_status)

    def kill(self) -> None:
        if self.exit_status is None:
            self.signal(signal.SIGKILL)
            self.reap(5.0)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _max_fd() -> int:
    """One above the highest fd this process holds (so the domain can close all the others)."""
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return 1024


def _fork_domain(role: str, body: Callable[[int], None], keep: list[int]) -> Domain:
    """Fork a domain running `body(status_fd)`; the child closes every inherited fd but stdin,
    stdout (pointed at stderr: stdout is the launcher's), stderr, its status pipe and `keep`."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(w)
        os.set_blocking(r, False)
        return Domain(role, pid, r)
    code = 1
    try:
        os.close(r)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when to stop
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.dup2(2, 1)
        for fd in range(3, _max_fd()):
            if fd != w and fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        body(w)
        code = 0
    except BaseException as e:
        with contextlib.suppress(BaseException):
            traceback.print_exc()  # to stderr (a confined domain cannot read its sources: ok)
            _report(w, "error", domain=role, error=f"{type(e).__name__}: {e}")
    finally:
        os._exit(code)


def _confine(policy: str, uid: int, confine: bool) -> dict:
    if not confine:
        return {"confined": False}
    return {"confined": True, **sandbox.confine(uid, uid, sandbox.POLICIES[policy])}


def _report_driver_ready(status: int, nic: Device | RingLayout, info: dict) -> None:
    """The driver domain's "ready" line: what the protocol domain must know of the NIC."""
    _report(
        status,
        "ready",
        domain=DRIVER,
        pid=os.getpid(),
        mac=nic.mac.hex(),
        mtu=nic.mtu,
        vnet_hdr_len=nic.vnet_hdr_len,
        **info,
    )


def _driver_body(args: argparse.Namespace, link: FrameLink) -> Callable[[int], None]:
    def body(status: int) -> None:
        dev = open_device(args.device, args.iface, args.offload.vnet_hdr)
        end = link.end(DRIVER)
        pump = DriverPump(dev, end)
        signal.signal(signal.SIGTERM, pump.stop)
        info = _confine(DRIVER, args.driver_uid, args.confine)
        _report_driver_ready(status, dev, info)
        pump.run()
        stats = {
            "device": asdict(dev.stats),
            "pump": asdict(pump.stats),
            "bells": asdict(end.stats),
        }
        _report(status, "stopped", domain=DRIVER, stats=stats)

    return body


def _kicker_body(args: argparse.Namespace, nic: SharedNic) -> Callable[[int], None]:
    def body(status: int) -> None:
        kicker = Kicker(nic.sock, nic.bell)
        signal.signal(signal.SIGTERM, kicker.stop)
        info = _confine(DRIVER, args.driver_uid, args.confine)
        _report_driver_ready(status, nic.layout, info)
        kicker.run()
        stats = {"device": kicker.device_stats(), "kicker": asdict(kicker.stats)}
        _report(status, "stopped", domain=DRIVER, stats=stats)

    return body


def _protocol_body(
    args: argparse.Namespace, make_device: Callable[[], Device], driver_pid: int, path: str
) -> Callable[[int], None]:
    """The protocol domain over whichever device the link gives it (`make_device`, called in
    the domain after the fork)."""

    def body(status: int) -> None:
        dev = make_device()
        sp = StackProcess(dev, args.offload, args.addr, path, args.gateway, args.linger)
        signal.signal(signal.SIGTERM, sp.stop)
        end = dev.end if isinstance(dev, ShmDevice) else None
        transmit = dev.transmit if isinstance(dev, SharedRingDevice) else None
        ring = transmit if isinstance(transmit, UringTransmit) else None
        if args.attackable:
            attacks = Attacks(end, sp.server, driver_pid, ring)

            def attack(*_args) -> None:
                _report(status, "attacks", domain=PROTOCOL, results=attacks.run_all())

            signal.signal(signal.SIGUSR1, attack)
        policy = "protocol-uring" if ring is not None else PROTOCOL
        info = _confine(policy, args.protocol_uid, args.confine)
        _report(status, "ready", domain=PROTOCOL, pid=os.getpid(), **info)
        sp.run()
        stats = sp.stats()
        if end is not None:
            stats["bells"] = asdict(end.stats)
        if transmit is not None and transmit.stats is not None:
            stats["transmit"] = asdict(transmit.stats)
        _report(status, "stopped", domain=PROTOCOL, stats=stats)

    return body


class Launcher:
    """Owns the NIC take-over and the domains; `start`, then `supervise`, then `stop`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.path = args.socket or default_socket_path(args.iface)
        self.domains: dict[str, Domain] = {}
        self.ready: dict[str, dict] = {}
        self._stop = False
        self.takeover = None

    def request_stop(self, *_args) -> None:
        self._stop = True

    def start(self) -> dict:
        from guest.stack.device.setup import take_over

        args = self.args
        if args.confine and (why := sandbox.supported()) is not None:
            raise LaunchError(f"cannot confine the domains: {why} (or pass --no-confine)")
        if args.link in SHARED_LINKS and args.device == "packet":
            raise LaunchError(f"--link {args.link} needs a ring device (or pass --link copy)")
        self.takeover = take_over(args.iface, args.offload.features)
        if args.link in SHARED_LINKS:
            self._start_shared()
        else:
            self._start_copy()
        return {
            "event": "ready",
            "iface": args.iface,
            "addr": args.addr,
            "socket": self.path,
            "device": args.device,
            "link": args.link,
            "offload": str(args.offload),
            "pid": os.getpid(),
            "domains": self.ready,
        }

    def _start_shared(self) -> None:
        """The kernel's rings shared with the protocol domain (`shared.py`), which asks for
        transmission by ringing the driver (`shared`) or through a send-only io_uring
        (`uring`, `uring.py`)."""
        args = self.args
        version = 3 if args.device == "ring-v3" else 2
        nic = SharedNic(args.iface, version, args.offload.vnet_hdr)
        ring: SendRing | None = None
        try:
            if args.link == "uring":
                try:  # holds the socket: made before any fork
                    ring = SendRing(nic.sock.fileno())
                except OSError as exc:
                    raise LaunchError(
                        f"--link uring: no send-only io_uring on this kernel ({exc}); "
                        "pass --link shared"
                    ) from exc
            self._start_domain(DRIVER, _kicker_body(args, nic), nic.driver_fds())
            # Mapped after the driver's fork: only the protocol domain inherits the mappings.
            view = nic.map_rings()
            queues = ring.map_queues() if ring is not None else None
            keep = nic.protocol_fds(ring.fd if ring is not None else nic.bell)
            epoll_fd = keep[0]

            def device() -> Device:
                transmit: Transmitter
                if ring is not None and queues is not None:
                    transmit = UringTransmit(ring.fd, ring.layout, queues)
                else:
                    transmit = DriverDoorbell(nic.bell)
                return SharedRingDevice(nic.layout, view, epoll_fd, transmit)

            driver_pid = int(self.ready[DRIVER]["pid"])
            body = _protocol_body(args, device, driver_pid, self.path)
            self._start_domain(PROTOCOL, body, keep)
            del device
            view.release()  # this process's views: the launcher keeps no mapping
            if queues is not None:
                queues.release()
        finally:
            if ring is not None:
                ring.close()
            nic.close()

    def _start_copy(self) -> None:
        """Frames copied through rings between the domains (`link.py`)."""
        args = self.args
        link = FrameLink(LinkGeometry.for_frames(SUPER_FRAME))
        try:
            keep = link.fds()
            self._start_domain(DRIVER, _driver_body(args, link), keep)
            nic = self.ready[DRIVER]

            def device() -> Device:
                mac, mtu, vlen = (
                    bytes.fromhex(nic["mac"]),
                    int(nic["mtu"]),
                    int(nic["vnet_hdr_len"]),
                )
                return ShmDevice(link.end(PROTOCOL), args.iface, mtu, mac, vlen)

            body = _protocol_body(args, device, int(nic["pid"]), self.path)
            self._start_domain(PROTOCOL, body, keep)
        finally:
            link.close()

    def _start_domain(self, role: str, body: Callable[[int], None], keep: list[int]) -> None:
        domain = _fork_domain(role, body, keep)
        self.domains[role] = domain
        line = domain.wait_for("ready", READY_TIMEOUT_S)
        if line is None or line.get("event") != "ready":
            domain.reap(1.0)
            why = line.get("error") if line else f"no answer ({domain.describe_exit()})"
            raise LaunchError(f"the {role} domain did not start: {why}")
        self.ready[role] = line

    def supervise(self) -> dict | None:
        """Until a stop is asked for or a domain dies; the death report, or None."""
        watch = {d.fd: d for d in self.domains.values()}
        while not self._stop:
            ready, _, _ = select.select(list(watch), [], [], 0.5)
            for fd in ready:
                domain = watch[fd]
                alive = domain.read()
                for line in domain.lines:
                    if line.get("event") == "attacks":  # --attackable: pass the results on
                        print(json.dumps(line), flush=True)
                domain.lines = [x for x in domain.lines if x.get("event") != "attacks"]
                if not alive:
                    domain.reap(2.0)
                    errors = [x["error"] for x in domain.lines if x.get("event") == "error"]
                    return {
                        "event": "domain-died",
                        "domain": domain.role,
                        "pid": domain.pid,
                        "how": domain.describe_exit(),
                        "error": errors[-1] if errors else None,
                    }
        return None

    def stop(self) -> dict:
        """Stop the protocol domain (it lingers), then the driver; their counters merged."""
        stats: dict[str, Any] = {}
        for role in (PROTOCOL, DRIVER):
            domain = self.domains.get(role)
            if domain is None or domain.exit_status is not None:
                continue
            domain.signal(signal.SIGTERM)
            line = domain.wait_for("stopped", self.args.linger + 10.0)
            if line is not None and line.get("event") == "stopped":
                stats[role] = line["stats"]
            domain.reap(5.0)
        proto, drv = stats.get(PROTOCOL, {}), stats.get(DRIVER, {})
        if self.args.link in SHARED_LINKS:
            # One device seen from two domains: the protocol's counters, the kernel's drops
            # (which only the driver can read). The driver's counters say how often it was
            # rung (wakeups) and how many send() calls it made (kicks); over `uring` it is
            # never rung, and the protocol domain counts its own submissions (transmit).
            device = {**(proto.get("device") or {}), **(drv.get("device") or {})}
            link = {"mode": self.args.link, "driver": drv.get("kicker")}
            if "transmit" in proto:
                link["transmit"] = proto["transmit"]
            return {
                "stack": proto.get("stack"),
                "nic": proto.get("nic"),
                "device": device,
                "link": link,
            }
        return {
            "stack": proto.get("stack"),
            "nic": proto.get("nic"),
            "device": drv.get("device"),
            "link": {"mode": "copy", "protocol": proto.get("device"), "driver": drv.get("pump")},
            "bells": {"protocol": proto.get("bells"), "driver": drv.get("bells")},
        }

    def close(self) -> None:
        """Whatever happened: no domain left running, the NIC given back, the socket gone."""
        for domain in self.domains.values():
            domain.kill()
        if self.takeover is not None:
            self.takeover.restore()
            self.takeover = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 -m guest.stack.factored", description=__doc__)
    add_stack_arguments(ap)
    ap.add_argument("--linger", type=float, default=DEFAULT_LINGER_S, help=argparse.SUPPRESS)
    ap.add_argument(
        "--driver-uid", type=int, default=DRIVER_UID, help=f"(and gid; default {DRIVER_UID})"
    )
    ap.add_argument(
        "--protocol-uid",
        type=int,
        default=PROTOCOL_UID,
        help=f"(and gid; default {PROTOCOL_UID})",
    )
    ap.add_argument(
        "--link",
        choices=LINKS,
        default=LINKS[0],
        help="driver<->protocol boundary: the kernel's packet rings shared with the protocol "
        "domain, which rings the driver to transmit ('shared') or submits sends on a send-only "
        "io_uring ('uring'); or every frame copied through rings between the domains ('copy')",
    )
    ap.add_argument(
        "--no-confine",
        dest="confine",
        action="store_false",
        help="run the domains as root without seccomp (to measure what confinement costs)",
    )
    ap.add_argument(
        "--attackable",
        action="store_true",
        help=argparse.SUPPRESS,  # tests only: SIGUSR1 makes the protocol domain attack (attacks.py)
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    assert isinstance(args.offload, Offloads)
    launcher = Launcher(args)
    signal.signal(signal.SIGTERM, launcher.request_stop)
    signal.signal(signal.SIGINT, launcher.request_stop)
    try:
        try:
            print(json.dumps(launcher.start()), flush=True)
        except LaunchError as e:
            print(json.dumps({"event": "error", "error": str(e)}), flush=True)
            print(f"factored: {e}", file=sys.stderr)
            return 2
        died = launcher.supervise()
        if died is not None:
            print(json.dumps(died), flush=True)
            print(f"factored: the {died['domain']} domain died ({died['how']})", file=sys.stderr)
            return EXIT_DOMAIN_DIED
        stats = launcher.stop()
        print(json.dumps({"event": "stopped", "stats": stats}, default=str), flush=True)
        return 0
    finally:
        launcher.close()

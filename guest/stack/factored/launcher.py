"""The factored stack's launcher: sets up the boundary, forks and confines the domains, supervises.

`python3 -m guest.stack.factored --iface eth1 --addr 198.18.1.1/24` (as root) does what the
monolithic stack does, split into protection domains after the EROS design
(`shared/REFERENCE.md`):

1. takes the NIC from the kernel (`device.setup.take_over`, root only);
2. sets up the driver<->protocol boundary (`--link`, an entry of `boundaries.BOUNDARIES`):
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
   same `loop.StackLoop` the monolithic stack runs, over the kernel's rings mapped without
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
from collections.abc import Callable
from typing import Any

from guest.stack.device.kinds import DEVICE_KINDS
from guest.stack.offloads import Offloads
from guest.stack.options import DEFAULT_LINGER_S, add_stack_arguments, default_socket_path

from . import sandbox
from .boundaries import BOUNDARIES, DEFAULT_BOUNDARY
from .domains import Domain, LaunchError, fork_domain
from .link import DRIVER, PROTOCOL

#: Default uids (and gids) of the domains: unused system ids, no passwd entry needed.
DRIVER_UID = 64901
PROTOCOL_UID = 64902
READY_TIMEOUT_S = 30.0
EXIT_DOMAIN_DIED = 3


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
        boundary = BOUNDARIES[args.link]
        if boundary.over_kernel_rings and DEVICE_KINDS[args.device].ring_version is None:
            raise LaunchError(f"--link {args.link} needs a ring device (or pass --link copy)")
        self.takeover = take_over(args.iface, args.offload.features)
        boundary.start(self)
        return {
            "event": "ready",
            "iface": args.iface,
            "addr": args.addr,
            "socket": self.path,
            "device": args.device,
            "link": args.link,
            "offload": str(args.offload),
            "cc": args.cc,
            "pid": os.getpid(),
            "domains": self.ready,
        }

    def start_domain(self, role: str, body: Callable[[int], None], keep: list[int]) -> None:
        domain = fork_domain(role, body, keep)
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
        return BOUNDARIES[self.args.link].summarize(self.args.link, proto, drv)

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
        choices=tuple(BOUNDARIES),
        default=DEFAULT_BOUNDARY,
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

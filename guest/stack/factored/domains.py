"""The factored stack's domains as processes: forked, confined, reporting on a pipe.

What every boundary (`boundaries`) needs to start its two domains, and what the launcher needs
to supervise them: `fork_domain` runs a body in a child that closes every fd it was not
given, `Domain` is the launcher's handle on it (status pipe, exit status), `report` is the
one way a domain speaks (a JSON line on its pipe: a plain write, allowed under every policy),
`protocol_body` is the protocol domain, which is the same over every boundary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from guest.stack.device.base import Device
from guest.stack.device.ring import RingLayout
from guest.stack.loop import StackLoop
from guest.stack.options import tcp_config_from

from . import sandbox
from .attacks import Attacks
from .link import DRIVER, PROTOCOL
from .shared import SharedRingDevice
from .shmdev import ShmDevice
from .uring import UringTransmit


class LaunchError(Exception):
    """A domain did not come up; the message says which and why."""


def report(fd: int, event: str, **fields: Any) -> None:
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


def fork_domain(role: str, body: Callable[[int], None], keep: list[int]) -> Domain:
    """Fork a domain running `body(status_fd)`; the child closes every inherited fd but stdin,
    stdout (pointed at stderr: stdout is the launcher's), stderr, its status pipe and `keep`."""
    r, w = os.pipe2(os.O_CLOEXEC)
    launcher = os.getpid()
    pid = os.fork()
    if pid:
        os.close(w)
        os.set_blocking(r, False)
        return Domain(role, pid, r)
    code = 1
    try:
        sandbox.die_with_parent(launcher)
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
            report(w, "error", domain=role, error=f"{type(e).__name__}: {e}")
    finally:
        os._exit(code)


def confine_domain(policy: str, uid: int, confine: bool) -> dict:
    if not confine:
        return {"confined": False}
    return {"confined": True, **sandbox.confine(uid, uid, sandbox.POLICIES[policy])}


def report_driver_ready(status: int, nic: Device | RingLayout, info: dict) -> None:
    """The driver domain's "ready" line: what the protocol domain must know of the NIC."""
    report(
        status,
        "ready",
        domain=DRIVER,
        pid=os.getpid(),
        mac=nic.mac.hex(),
        mtu=nic.mtu,
        vnet_hdr_len=nic.vnet_hdr_len,
        **info,
    )


def protocol_body(
    args: argparse.Namespace, make_device: Callable[[], Device], driver_pid: int, path: str
) -> Callable[[int], None]:
    """The protocol domain over whichever device the link gives it (`make_device`, called in
    the domain after the fork)."""

    def body(status: int) -> None:
        dev = make_device()
        sp = StackLoop(
            dev,
            args.offload,
            args.addr,
            path,
            args.gateway,
            args.linger,
            args.inject_rx_us,
            tcp_config_from(args),
            profile=args.profile,
        )
        signal.signal(signal.SIGTERM, sp.stop)
        end = dev.end if isinstance(dev, ShmDevice) else None
        transmit = dev.transmit if isinstance(dev, SharedRingDevice) else None
        ring = transmit if isinstance(transmit, UringTransmit) else None
        if args.attackable:
            attacks = Attacks(end, sp.server, driver_pid, ring)

            def attack(*_args) -> None:
                report(status, "attacks", domain=PROTOCOL, results=attacks.run_all())

            signal.signal(signal.SIGUSR1, attack)
        policy = "protocol-uring" if ring is not None else PROTOCOL
        info = confine_domain(policy, args.protocol_uid, args.confine)
        report(status, "ready", domain=PROTOCOL, pid=os.getpid(), **info)
        sp.run()
        stats = sp.stats()
        if end is not None:
            stats["bells"] = asdict(end.stats)
        if transmit is not None and transmit.stats is not None:
            stats["transmit"] = asdict(transmit.stats)
        report(status, "stopped", domain=PROTOCOL, stats=stats)

    return body

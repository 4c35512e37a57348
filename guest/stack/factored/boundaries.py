"""The driver<->protocol boundaries of the factored stack, by name: the one registry of them.

Each `Boundary` says how its two domains are set up and started (`start`), and how the two
domains' counters become one stack summary (`summarize`). The launcher looks the chosen one
up and never asks which it is; the traffic tool's `--stack-link`, the launcher's `--link` and
the host's lab-file schema take their choices from `BOUNDARIES`, and the bench's tables their
labels, so adding a boundary is one entry here. Looking a name up imports none of the
boundary code (the traffic tool, which every run starts, only needs the names); a boundary's
modules are imported when the launcher starts it, before any domain is forked.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:  # the set-ups import their modules when run: a lookup of names stays cheap
    from guest.stack.device.base import Device

    from .link import FrameLink
    from .shared import SharedNic


class DomainStarter(Protocol):
    """What a boundary needs from the launcher to start its domains."""

    args: argparse.Namespace
    path: str
    ready: dict[str, dict]

    def start_domain(self, role: str, body: Callable[[int], None], keep: list[int]) -> None: ...


@dataclass(frozen=True)
class Boundary:
    """One way to cut the stack between a driver domain and a protocol domain."""

    #: How tables name it (the path column of the bench).
    label: str
    #: True: the protocol domain works in the kernel's own packet rings (needs a ring device).
    over_kernel_rings: bool
    #: Sets the boundary up and starts the driver, then the protocol domain.
    start: Callable[[DomainStarter], None]
    #: (boundary name, protocol domain's counters, driver domain's) -> the stack summary.
    summarize: Callable[[str, dict, dict], dict]


# --- the kernel's rings shared with the protocol domain (uring, shared) -----------------------


def _kicker_body(args: argparse.Namespace, nic: SharedNic) -> Callable[[int], None]:
    from .domains import confine_domain, report, report_driver_ready
    from .link import DRIVER
    from .shared import Kicker

    def body(status: int) -> None:
        kicker = Kicker(nic.sock, nic.bell)
        signal.signal(signal.SIGTERM, kicker.stop)
        info = confine_domain(DRIVER, args.driver_uid, args.confine)
        report_driver_ready(status, nic.layout, info)
        kicker.run()
        stats = {"device": kicker.device_stats(), "kicker": asdict(kicker.stats)}
        report(status, "stopped", domain=DRIVER, stats=stats)

    return body


def _start_shared(launcher: DomainStarter, with_uring: bool) -> None:
    """The kernel's rings shared with the protocol domain (`shared.py`), which asks for
    transmission through a send-only io_uring (`uring.py`) or by ringing the driver."""
    from guest.stack.device.kinds import DEVICE_KINDS

    from .domains import LaunchError, protocol_body
    from .link import DRIVER, PROTOCOL
    from .shared import DriverDoorbell, SharedNic, SharedRingDevice, Transmitter
    from .uring import SendRing, UringTransmit

    args = launcher.args
    version = DEVICE_KINDS[args.device].ring_version
    assert version is not None, "checked by the launcher: over_kernel_rings needs rings"
    nic = SharedNic(args.iface, version, args.offload.vnet_hdr)
    ring: SendRing | None = None
    try:
        if with_uring:
            try:  # holds the socket: made before any fork
                ring = SendRing(nic.sock.fileno())
            except OSError as exc:
                raise LaunchError(
                    f"--link uring: no send-only io_uring on this kernel ({exc}); "
                    "pass --link shared"
                ) from exc
        launcher.start_domain(DRIVER, _kicker_body(args, nic), nic.driver_fds())
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

        driver_pid = int(launcher.ready[DRIVER]["pid"])
        body = protocol_body(args, device, driver_pid, launcher.path)
        launcher.start_domain(PROTOCOL, body, keep)
        del device
        view.release()  # this process's views: the launcher keeps no mapping
        if queues is not None:
            queues.release()
    finally:
        if ring is not None:
            ring.close()
        nic.close()


def _summarize_shared(name: str, proto: dict, drv: dict) -> dict:
    """One device seen from two domains: the protocol's counters, the kernel's drops (which
    only the driver can read). The driver's counters say how often it was rung (wakeups) and
    how many send() calls it made (kicks); over `uring` it is never rung, and the protocol
    domain counts its own submissions (transmit)."""
    device = {**(proto.get("device") or {}), **(drv.get("device") or {})}
    link: dict[str, Any] = {"mode": name, "driver": drv.get("kicker")}
    if "transmit" in proto:
        link["transmit"] = proto["transmit"]
    return {
        "stack": proto.get("stack"),
        "nic": proto.get("nic"),
        "device": device,
        "link": link,
        **_loop_figures(proto),
    }


# --- frames copied through rings of their own (copy) ------------------------------------------


def _driver_body(args: argparse.Namespace, link: FrameLink) -> Callable[[int], None]:
    from guest.stack.device.kinds import open_device

    from .domains import confine_domain, report, report_driver_ready
    from .driver import DriverPump
    from .link import DRIVER

    def body(status: int) -> None:
        dev = open_device(args.device, args.iface, args.offload.vnet_hdr)
        end = link.end(DRIVER)
        pump = DriverPump(dev, end)
        signal.signal(signal.SIGTERM, pump.stop)
        info = confine_domain(DRIVER, args.driver_uid, args.confine)
        report_driver_ready(status, dev, info)
        pump.run()
        stats = {
            "device": asdict(dev.stats),
            "pump": asdict(pump.stats),
            "bells": asdict(end.stats),
        }
        report(status, "stopped", domain=DRIVER, stats=stats)

    return body


def _start_copy(launcher: DomainStarter) -> None:
    """Frames copied through rings between the domains (`link.py`)."""
    from .domains import protocol_body
    from .link import DRIVER, PROTOCOL, SUPER_FRAME, FrameLink, LinkGeometry
    from .shmdev import ShmDevice

    args = launcher.args
    link = FrameLink(LinkGeometry.for_frames(SUPER_FRAME))
    try:
        keep = link.fds()
        launcher.start_domain(DRIVER, _driver_body(args, link), keep)
        nic = launcher.ready[DRIVER]

        def device() -> Device:
            mac, mtu, vlen = bytes.fromhex(nic["mac"]), int(nic["mtu"]), int(nic["vnet_hdr_len"])
            return ShmDevice(link.end(PROTOCOL), args.iface, mtu, mac, vlen)

        body = protocol_body(args, device, int(nic["pid"]), launcher.path)
        launcher.start_domain(PROTOCOL, body, keep)
    finally:
        link.close()


def _summarize_copy(name: str, proto: dict, drv: dict) -> dict:
    return {
        "stack": proto.get("stack"),
        "nic": proto.get("nic"),
        "device": drv.get("device"),
        "link": {"mode": name, "protocol": proto.get("device"), "driver": drv.get("pump")},
        "bells": {"protocol": proto.get("bells"), "driver": drv.get("bells")},
        **_loop_figures(proto),
    }


def _loop_figures(proto: dict) -> dict:
    """What the protocol domain's loop says of itself, as the monolithic stack reports it:
    its passes, its CPU and, with `--profile`, its CPU by layer."""
    return {key: proto[key] for key in ("loop", "cpu", "profile") if key in proto}


#: Boundary name (`--link`) -> its set-up; the default first.
BOUNDARIES: Final[dict[str, Boundary]] = {
    "uring": Boundary(
        "shared rings, io_uring send",
        over_kernel_rings=True,
        start=lambda launcher: _start_shared(launcher, with_uring=True),
        summarize=_summarize_shared,
    ),
    "shared": Boundary(
        "shared rings, driver send",
        over_kernel_rings=True,
        start=lambda launcher: _start_shared(launcher, with_uring=False),
        summarize=_summarize_shared,
    ),
    "copy": Boundary(
        "copy rings", over_kernel_rings=False, start=_start_copy, summarize=_summarize_copy
    ),
}
DEFAULT_BOUNDARY: Final = next(iter(BOUNDARIES))

"""What every user-level stack is started with: defaults and the command-line options that the
monolithic stack and the factored launcher share, with their choices from the registries
(`device.kinds.DEVICE_KINDS`, `nic.LEVERS`)."""

from __future__ import annotations

import argparse

from guest.stack.device.kinds import DEFAULT_DEVICE, DEVICE_KINDS
from guest.stack.offloads import LEVERS, Offloads
from guest.stack.tcp.config import TcpConfig
from guest.stack.tcp.controllers import CONGESTION_CONTROLS, DEFAULT_CC

#: Every lever on: the fastest configuration (see the levers bench, configs/levers.yaml).
DEFAULT_OFFLOADS = Offloads(csum=True, tso=True, gro=True)
#: How long a stack asked to stop keeps running to finish close handshakes (FIN, last data).
#: A lost FIN is resent on the retransmission timer, which backs off: under emulation with
#: loss the RTO can reach seconds, and 5 s allowed one resend only, so a peer could miss
#: the FIN for good (the kernel keeps an orphaned connection retrying for minutes).
DEFAULT_LINGER_S = 20.0


#: TCP mechanisms `--tcp-disable` can turn off, by the TcpConfig field of each: the loss
#: recovery ones, and header prediction (to measure what it buys).
MECHANISMS = {
    "rack": "rack",
    "tlp": "tlp",
    "prr": "prr",
    "sack-recovery": "sack_recovery",
    "fast-path": "fast_path",
}


def _mechanisms(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    if unknown := [n for n in names if n not in MECHANISMS]:
        known = ", ".join(MECHANISMS)
        raise argparse.ArgumentTypeError(f"unknown mechanism {', '.join(unknown)} (of {known})")
    return names


def default_socket_path(iface: str) -> str:
    """Where a stack on `iface` serves its applications unless told otherwise."""
    return f"/run/stackbed/stack-{iface}.sock"


def _offloads(text: str) -> Offloads:
    try:
        return Offloads.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_stack_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every user-level stack takes (the monolithic and the factored one)."""
    ap.add_argument("--iface", required=True, help="NIC to take from the kernel")
    ap.add_argument("--addr", required=True, help="the stack's address, CIDR (198.18.x.y/n)")
    ap.add_argument("--gateway", help="default gateway (optional)")
    ap.add_argument(
        "--socket", help="UNIX socket for applications (default /run/stackbed/stack-IFACE.sock)"
    )
    ap.add_argument("--device", choices=tuple(DEVICE_KINDS), default=DEFAULT_DEVICE)
    ap.add_argument(
        "--inject-rx-us",
        type=float,
        default=0.0,
        help="fault injection, for testing regression detection: spin this many microseconds "
        "on every received frame (default 0: off)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run the loop under cProfile and report its CPU by layer on exit (in the stopped "
        "line's stats; roughly doubles the stack's CPU, so compare profiled runs only)",
    )
    ap.add_argument(
        "--cc",
        choices=tuple(CONGESTION_CONTROLS),
        default=DEFAULT_CC,
        help=f"TCP congestion control (default {DEFAULT_CC})",
    )
    ap.add_argument(
        "--no-syncookies",
        dest="syncookies",
        action="store_false",
        help="drop SYNs when a listener's backlog is full instead of answering with SYN "
        "cookies (to show what cookies protect against)",
    )
    ap.add_argument(
        "--tcp-disable",
        type=_mechanisms,
        default=(),
        help=f"turn off TCP loss-recovery mechanisms, a comma list of {', '.join(MECHANISMS)} "
        "(to measure what each buys; default: none off)",
    )
    ap.add_argument(
        "--offload",
        type=_offloads,
        default=DEFAULT_OFFLOADS,
        help=f"none, all, or a comma list of {', '.join(LEVERS)} (default {DEFAULT_OFFLOADS})",
    )


def tcp_config_from(args: argparse.Namespace) -> TcpConfig:
    """The TCP settings the stack's options ask for (the rest are TcpConfig's defaults)."""
    off = {MECHANISMS[name]: False for name in args.tcp_disable}
    return TcpConfig(cc=args.cc, syncookies=args.syncookies, **off)

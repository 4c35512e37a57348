"""Command line: argument parsing, dispatch, and the exit-status / error-line contract."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from guest.stack.device.kinds import DEFAULT_DEVICE, DEVICE_KINDS
from guest.stack.factored.boundaries import BOUNDARIES, DEFAULT_BOUNDARY
from guest.stack.offloads import LEVERS
from guest.stack.tcp.controllers import CONGESTION_CONTROLS, DEFAULT_CC

from .appdomain import AppDomainError, run_confined
from .errors import TrafficError, describe_error
from .providers import PROVIDERS
from .workloads import RUNNERS, base_record, emit

EXIT_OK = 0
EXIT_NET_ERROR = 1
EXIT_INTERRUPTED = 130


def _number(kind: Callable[[str], Any], *, minimum: float, strict: bool) -> Callable[[str], Any]:
    """argparse type: a number >= minimum (> minimum if strict), so bad values exit 2 early."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        if value < minimum or (strict and value == minimum):
            op = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {op} {minimum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


_POS_INT = _number(int, minimum=1, strict=False)
_NONNEG_INT = _number(int, minimum=0, strict=False)
_POS_FLOAT = _number(float, minimum=0, strict=True)
_NONNEG_FLOAT = _number(float, minimum=0, strict=False)


def _port(text: str) -> int:
    value = _NONNEG_INT(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--path",
        choices=sorted(PROVIDERS),
        default="kernel",
        help="network stack under test (default: kernel); floor: no stack, raw frames through "
        "a PACKET_MMAP ring on --iface, the least Python can do (guest/traffic/floor.py)",
    )
    common.add_argument(
        "--port",
        type=_port,
        default=5001,
        help="TCP port (servers: 0 = pick a free one; default 5001)",
    )
    common.add_argument(
        "--timeout",
        type=_POS_FLOAT,
        default=30.0,
        help="idle timeout in s for any blocking socket op (default 30)",
    )
    common.add_argument("--label", default="", help="free text echoed into the JSON result")
    common.add_argument(
        "--kernel-cc",
        help="kernel path: the congestion control of the connections opened (TCP_CONGESTION; "
        "default: the system's, which a host may set to bbr while Debian's is cubic)",
    )
    user = common.add_argument_group("user-level paths (mono, factored, floor)")
    user.add_argument("--iface", help="NIC the user-level stack (or the floor) runs on")
    user.add_argument(
        "--addr",
        help="the stack's address, CIDR; starts a stack for the run when none serves --iface",
    )
    user.add_argument(
        "--stack-gateway",
        metavar="ADDR",
        help="the default gateway of a stack started for the run, for a peer beyond --iface's "
        "subnet (a router on that subnet)",
    )
    user.add_argument(
        "--stack-socket", help="a running stack's socket (default /run/stackbed/stack-IFACE.sock)"
    )
    user.add_argument(
        "--stack-device",
        choices=tuple(DEVICE_KINDS),
        default=DEFAULT_DEVICE,
        help="NIC access of a stack started for the run",
    )
    user.add_argument(
        "--stack-offload",
        default="all",
        help="offload levers of a stack started for the run: none, all, or a comma list of "
        f"{', '.join(LEVERS)} (default all)",
    )
    user.add_argument(
        "--stack-cc",
        choices=tuple(CONGESTION_CONTROLS),
        default=DEFAULT_CC,
        help=f"TCP congestion control of a stack started for the run (default {DEFAULT_CC})",
    )
    user.add_argument(
        "--stack-profile",
        action="store_true",
        help="a stack started for the run profiles its loop and reports its CPU by layer",
    )
    user.add_argument(
        "--stack-inject-rx-us",
        type=float,
        default=0.0,
        help="fault injection of a stack started for the run: spin this many microseconds per "
        "received frame (default 0: off; for testing regression detection)",
    )
    user.add_argument(
        "--no-confine-app",
        dest="confine_app",
        action="store_false",
        help="factored only: run the workload in this process, not as a confined application "
        "domain (own uid, seccomp)",
    )
    user.add_argument(
        "--no-confine-stack",
        dest="confine_stack",
        action="store_false",
        help="factored only: run the driver and protocol domains of a stack started for the "
        "run as root without seccomp (to measure what confinement costs)",
    )
    user.add_argument(
        "--stack-link",
        choices=tuple(BOUNDARIES),
        default=DEFAULT_BOUNDARY,
        help="factored only: the driver<->protocol boundary of a stack started for the run "
        f"(default {DEFAULT_BOUNDARY}; see python3 -m guest.stack.factored --help)",
    )
    return common


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peer", required=True, help="server address")
    parser.add_argument(
        "--connect-timeout",
        type=_NONNEG_FLOAT,
        default=15.0,
        help="keep retrying a refused connect this long in s (default 15)",
    )


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="0.0.0.0", help="listen address (default 0.0.0.0)")


def _stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--msg-size", type=_POS_INT, default=65536, help="bytes per write/read (default 65536)"
    )
    parser.add_argument(
        "--no-hash",
        action="store_true",
        help="skip sha256 (sha256 is then null) for CPU-bound runs",
    )


def _rr_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--req-size", type=_POS_INT, default=64, help="request bytes (64)")
    parser.add_argument("--resp-size", type=_POS_INT, default=64, help="response bytes (64)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m guest.traffic",
        description="stackbed traffic generator; prints one JSON result line on stdout.",
    )
    sub = parser.add_subparsers(dest="role", required=True, metavar="SUBCOMMAND")
    common = _common_options()

    sink = sub.add_parser("sink", parents=[common], help="receive one stream, report sha256")
    _server_options(sink)
    _stream_options(sink)

    source = sub.add_parser("source", parents=[common], help="send the seeded pattern stream")
    _client_options(source)
    _stream_options(source)
    source.add_argument("--seed", type=int, default=1, help="pattern seed (default 1)")
    amount = source.add_mutually_exclusive_group()
    amount.add_argument("--bytes", type=_NONNEG_INT, help="send exactly this many bytes")
    amount.add_argument("--duration", type=_POS_FLOAT, help="send for this many s (default 10)")

    server = sub.add_parser("rr-server", parents=[common], help="answer request/response pings")
    _server_options(server)
    _rr_options(server)

    client = sub.add_parser("rr-client", parents=[common], help="measure transaction latency")
    _client_options(client)
    _rr_options(client)
    amount = client.add_mutually_exclusive_group()
    amount.add_argument("--count", type=_POS_INT, help="do this many transactions")
    amount.add_argument("--duration", type=_POS_FLOAT, help="run this many s (default 5)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.role == "source" and args.bytes is None and args.duration is None:
        args.duration = 10.0
    if args.role == "rr-client" and args.count is None and args.duration is None:
        args.duration = 5.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    provider = None
    try:
        provider = PROVIDERS[args.path](args)
        workload = functools.partial(RUNNERS[args.role], args, provider)
        if getattr(provider, "app_domains", False) and args.confine_app:
            try:
                result, domain = run_confined(workload)
            except AppDomainError as exc:
                if exc.record.get("kind") == "interrupted":
                    return _fail(args, "interrupted", EXIT_INTERRUPTED)
                return _fail(args, f"in the application domain: {exc}", EXIT_NET_ERROR, provider)
            result["app_domain"] = domain
        else:
            result = workload()
        stack = _close(provider)
        provider = None
        if stack:
            result["stack"] = stack  # the counters of a stack this run started, on its exit
        emit(result)
        return EXIT_OK
    except TrafficError as exc:
        return _fail(args, str(exc), EXIT_NET_ERROR, provider)
    except OSError as exc:  # anything not caught by a phase wrapper is still a network failure
        return _fail(args, describe_error(exc), EXIT_NET_ERROR, provider)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    finally:
        _close(provider)


def _close(provider: object) -> dict | None:
    """Close the provider; what it reports on closing (a started stack's counters) or None."""
    close = getattr(provider, "close", None)
    return close() if close is not None else None


def _fail(args: argparse.Namespace, message: str, code: int, provider: object | None = None) -> int:
    """Print the error line. A stack this run started is stopped first and its counters go
    into the line: a failure that happens once in a hundred runs is then explained by the
    one record it leaves (timeouts, retransmissions, drops), not only by its message."""
    record = base_record(args)
    record["error"] = message
    try:
        stack = _close(provider)
    except Exception as exc:  # the error line must still be printed
        stack = {"close_error": describe_error(exc)}
    if stack:
        record["stack"] = stack
    emit(record)
    return code


def run() -> NoReturn:
    """Process entry point used by ``python3 -m guest.traffic``."""
    sys.exit(main())

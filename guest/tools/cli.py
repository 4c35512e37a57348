"""What the tools' command lines share: option types for numbers with a lower bound, and the
SIGTERM/SIGINT handling of a tool that runs until it is stopped.

Each type is an argparse `type=`: it returns the value or raises `argparse.ArgumentTypeError`,
whose message argparse prints as it is (`argument --buffer: must be >= 1: '0'`).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def at_least(convert: Callable[[str], N], minimum: N, what: str) -> Callable[[str], N]:
    """A type parsing its text with `convert` (`what` names what it wants: "an integer") and
    refusing anything below `minimum`."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}: {text!r}")
        return value

    return parse


positive_int = at_least(int, 1, "an integer")
non_negative_int = at_least(int, 0, "an integer")
non_negative = at_least(float, 0.0, "a number")


def stop_on_signals() -> Callable[[], bool]:
    """Make SIGTERM and SIGINT ask to stop; the returned function says whether one has."""
    stop = False

    def request_stop(*_args: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return lambda: stop

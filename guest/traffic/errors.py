"""The traffic tool's failures: what every provider and workload raises, and how it reads.

Its own module so that the socket providers (`providers`, `userstack`) and the workloads can
all raise it without importing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TrafficError(Exception):
    """An expected, reportable failure (network trouble, protocol violation): exit 1, no trace."""


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError) and exc.errno else f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Turn socket errors into a one-line, phase-tagged :class:`TrafficError`."""
    try:
        yield
    except TrafficError:
        raise
    except OSError as exc:
        raise TrafficError(f"{name}: {describe_error(exc)}") from exc

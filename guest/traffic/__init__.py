"""stackbed traffic generator: bulk-stream and request/response TCP workloads.

Runs inside the guest VM as ``python3 -m guest.traffic SUBCOMMAND ...`` and therefore uses the
standard library only.  Every run ends with exactly ONE JSON line on stdout (the result, or an
``"error"`` object with exit status 1); everything else goes to stderr, so the host can parse
stdout without guessing.

Subcommands: ``sink``/``source`` (bulk stream, sha256-verified) and ``rr-server``/``rr-client``
(ping-pong transactions with per-transaction latency).

Layout: :mod:`.providers` (the ``--path`` socket providers and ``PROVIDERS``, their
registry; :mod:`.userstack`, the user-level ones), :mod:`.errors` (``TrafficError``),
:mod:`.metrics` (pure helpers),
:mod:`.workloads` (the four roles), :mod:`.cli` (arguments, exit codes).
"""

from .cli import build_parser, main, parse_args
from .errors import TrafficError
from .metrics import (
    PATTERN_BLOCK_LEN,
    Meter,
    Pattern,
    latency_summary_us,
    parse_proc_stat,
    percentile,
    read_proc_stat,
)
from .providers import (
    PROVIDERS,
    KernelProvider,
    Listener,
    SocketProvider,
    Stream,
    connect_with_retry,
)
from .workloads import TOOL, VERSION

__all__ = [
    "PATTERN_BLOCK_LEN",
    "PROVIDERS",
    "TOOL",
    "VERSION",
    "KernelProvider",
    "Listener",
    "Meter",
    "Pattern",
    "SocketProvider",
    "Stream",
    "TrafficError",
    "build_parser",
    "connect_with_retry",
    "latency_summary_us",
    "main",
    "parse_args",
    "parse_proc_stat",
    "percentile",
    "read_proc_stat",
]

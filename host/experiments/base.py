"""What every experiment type is made of, and what its runner is given.

An experiment type is one module in this folder exposing `TYPE`, an :class:`ExperimentType`:
its name in lab files, its runner, the options of a lab file's experiment entry that only it
takes (its config fragment), and how the report shows its results (table columns, the figure
a `baseline:` comparison uses, the plot it goes in). The registry (`host.experiments`) lists
the types; host.config, host.bench and host.report only ever go through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from host.ssh import Guest


class BenchError(RuntimeError):
    pass


class ExperimentEntry(Protocol):
    """What a runner reads of its lab-file entry (`host.config.ExperimentConfig`, which is
    built from this registry, so naming it here would close a cycle). The options a type
    declares are further attributes of the entry, by their names."""

    name: str
    duration_s: float

    def __getattr__(self, option: str) -> Any: ...


@dataclass
class Target:
    """Everything an experiment needs: who talks to whom, at which address."""

    exp: ExperimentEntry
    client: Guest
    server: Guest
    server_ip: str
    port: int
    #: Where the client connects, if not to the server's address (a proxy on a middle node).
    peer_ip: str | None = None
    client_path: str = "--path kernel"  # the traffic tool's path options on each side
    server_path: str = "--path kernel"

    @property
    def connect_ip(self) -> str:
        """The address the client connects to: the server's, or the proxy's before it."""
        return self.peer_ip or self.server_ip


@dataclass(frozen=True)
class Option:
    """A field of an experiment entry that only some types take: its pydantic type and the
    default those types get. Any other type refuses the field."""

    annotation: Any
    default: Any


@dataclass(frozen=True)
class Column:
    """A numeric column of the results table; columns sit left to right by `rank`."""

    title: str
    rank: int
    spec: str = ".0f"
    percent: bool = False  # a fraction, shown as a percentage (spec unused)


@dataclass(frozen=True)
class Compared:
    """The figure a `baseline:` comparison uses: the key in a run's result, and its name."""

    key: str
    figure: str


@dataclass(frozen=True)
class Gate:
    """A figure a nightly run watches for regressions: its key in a run's result, its name,
    and which way is better (host.nightly compares it with a baseline's)."""

    key: str
    figure: str
    better: Literal["higher", "lower"]
    #: False: compared and shown, never decides a regression (a tail too noisy to gate on).
    gated: bool = True


@dataclass(frozen=True)
class ExperimentType:
    name: str
    #: Drive the guests for one run; the dict of figures is saved as the run (raise
    #: BenchError on failure).
    run: Callable[[Target], dict]
    #: The config fragment: fields only this type takes (another type may share one).
    options: dict[str, Option] = field(default_factory=dict)
    #: The table's columns this type fills, each with the key of the summary it shows.
    columns: dict[Column, str] = field(default_factory=dict)
    #: None: this type cannot name a baseline.
    compared: Compared | None = None
    #: The figures a nightly run gates on, the first one also as a ratio to the kernel path.
    gates: tuple[Gate, ...] = ()
    #: The check column of a run without errors.
    check: str = "ok"
    #: What the path column says instead of the experiment's path, if anything.
    path_label: str | None = None
    #: It runs the kernel's own tool (iperf3, ping), so a lab file may not ask for another path.
    kernel_only: bool = False
    #: What it sends between client and server: a forwarding mode that relays only some
    #: transports (host.forwarding) refuses the others.
    transport: Literal["tcp", "icmp"] = "tcp"
    #: The plot's panel: throughput (mbit_per_s) or latency (p50_us, p99_us), or none.
    plot: Literal["throughput", "latency"] | None = None
    #: A note for the table's caption.
    note: str | None = None

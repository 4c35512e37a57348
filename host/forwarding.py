"""What the middle nodes of an experiment's route do with its traffic: the forwarding modes.

When no link joins an experiment's client and server, its traffic crosses transit nodes (the
middles, `host.routing.Path.transit`). An experiment's `forward:` names what every middle does
for its runs, one entry of `FORWARD_MODES`:

* `kernel` (the default): Linux IP forwarding, as bring-up left it. The client connects to
  the server's address; each middle's forwarded datagrams (Ip.ForwDatagrams) are reported.
* `socket-proxy`, `splice-proxy`: the proxy tool (guest/tools/proxy.py, `--mode socket` or
  `--mode splice`) on every middle. The client connects to the first middle's address on the
  client's link at the experiment's port; each middle's proxy listens on its address on the
  link towards the client and connects to the next middle's address on the next link, the last
  to the server's address. The proxies are listening before the run starts the server and the
  client, and are stopped (SIGTERM) after it; each one's final JSON line is its report.

Every mode reports per middle, over the run's window (from the moment the middles are ready to
the moment the run has finished): guest CPU (busy share of /proc/stat's aggregate line, as the
traffic tool counts it), forwarded datagrams, and the window's length; a mode adds its own.

A mode is a :class:`ForwardMode`: its name in lab files, what it carries (transports, see
`ExperimentType.transport`), whether it terminates the ends' connections (`terminates`: the
ends then talk to a neighbour on their own subnet, so a user-level end gets no gateway), and a
factory of :class:`Forwarder`, the object that sets the mode up on every middle for one run
(`start`), says where the client connects (`entry`) and tears down, returning each middle's
figures (`stop`). Adding a mode is adding an entry to `FORWARD_MODES` (here, or from a module
of its own imported here): the lab file's `forward:` choices, its refusals (`refuses`), the
bench's set-up and tear-down and the results' `forward` record all come from the registry.
The two modes planned next fit that shape:

* `extension`: `terminates=False` (the client connects to the server, as with `kernel`); its
  Forwarder's `start` turns the middle's kernel forwarding off and starts the frame-forwarding
  supervisor on the middle's two NICs (`Middle.upstream.nic`, `Middle.downstream.nic`), `stop`
  stops it, turns forwarding back on and adds the extension's own counters to `base_figures`.
* `stack-proxy`: `terminates=True`, `carries={"tcp"}`; its Forwarder starts a proxy on our
  user-level stack holding both NICs at the middle's addresses, like the proxies here.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from host.experiments.base import BenchError, ExperimentType
from host.experiments.measure import wait_listening
from host.ssh import GUEST_DIR, Guest, GuestError, RunningCommand

__all__ = [
    "DEFAULT_MODE",
    "FORWARD_MODES",
    "ForwardMode",
    "Forwarder",
    "Middle",
    "Side",
    "Transit",
    "forwarded",
]

#: How long a stopped proxy may take to print its report and exit.
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Side:
    """A middle node's end of one link: the link, its address there, its NIC (None if unknown)."""

    link: str
    ip: str
    nic: str | None = None


@dataclass(frozen=True)
class Middle:
    """One transit node of a route, in path order: the link towards the client (`upstream`),
    the one towards the server (`downstream`), and where its traffic goes next (`next_ip`: the
    next middle's upstream address, or the server's address for the last middle)."""

    node: str
    guest: Guest
    upstream: Side
    downstream: Side
    next_ip: str


@dataclass(frozen=True)
class Transit:
    """One run's middles, in path order, and the server's address and port."""

    middles: tuple[Middle, ...]
    server_ip: str
    port: int


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Sample:
    """A middle node's counters at one moment (host clock)."""

    at: float
    cpu_busy: int
    cpu_total: int
    forwarded: int


#: One SSH round trip: the aggregate CPU line, then the Ip: header and values of the SNMP file.
_SAMPLE_COMMAND = "head -n1 /proc/stat; grep '^Ip:' /proc/net/snmp"


def parse_sample(text: str, at: float) -> Sample:
    """A Sample from `_SAMPLE_COMMAND`'s output. CPU as the traffic tool counts it: total =
    user..steal, busy = total - idle - iowait."""
    lines = text.strip().splitlines()
    cpu = [int(v) for v in lines[0].split()[1:9]]
    total = sum(cpu)
    busy = total - cpu[3] - cpu[4]
    names, values = (line.split() for line in lines[1:3])
    return Sample(at, busy, total, int(values[names.index("ForwDatagrams")]))


def sample(guest: Guest) -> Sample:
    r = guest.run(_SAMPLE_COMMAND, timeout=30)
    if r.exit_status != 0:
        raise BenchError(f"{guest.name}: cannot read /proc/stat and /proc/net/snmp: {r.stderr}")
    return parse_sample(r.stdout, time.monotonic())


def base_figures(before: Sample, after: Sample) -> dict:
    """What every mode reports of a middle over a window: its guest CPU (busy share, all
    CPUs), the datagrams its kernel forwarded, and the window's length."""
    seconds = after.at - before.at
    total = after.cpu_total - before.cpu_total
    forwarded = after.forwarded - before.forwarded
    return {
        "seconds": round(seconds, 3),
        "cpu": round((after.cpu_busy - before.cpu_busy) / total, 3) if total > 0 else None,
        "forwarded_packets": forwarded,
        "forwarded_packets_per_s": round(forwarded / seconds, 1) if seconds > 0 else None,
    }


# --------------------------------------------------------------------------- forwarders


class Forwarder(ABC):
    """One run of a mode on every middle of a route: `start`, then the run (its client
    connects to `entry`), then `stop`, which returns each middle's figures by node name.

    `stop` is called whatever happened, also after a `start` that failed half-way: it tears
    down what was set up and raises BenchError (after tearing everything down) if a middle
    cannot give its figures."""

    def __init__(self, transit: Transit) -> None:
        self.transit = transit
        self._before: dict[str, Sample] = {}

    @property
    def entry(self) -> str:
        """The address the client connects to (the server's, unless the mode terminates)."""
        return self.transit.server_ip

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> dict[str, dict]: ...

    def _sample_all(self) -> None:
        self._before = {m.node: sample(m.guest) for m in self.transit.middles}

    def _figures_all(self) -> dict[str, dict]:
        return {
            m.node: base_figures(self._before[m.node], sample(m.guest))
            for m in self.transit.middles
            if m.node in self._before
        }


class KernelForwarder(Forwarder):
    """Linux IP forwarding, as the lab's bring-up set it: nothing to start, counters to read."""

    def start(self) -> None:
        self._sample_all()

    def stop(self) -> dict[str, dict]:
        return self._figures_all()


def _pidfile(port: int) -> str:
    return f"/run/stackbed-proxy-{port}.pid"


def proxy_command(mode: str, middle: Middle, port: int) -> str:
    """The shell command that runs the proxy tool on `middle`, recording its pid (the shell's,
    which `exec` hands to the proxy) for the stop."""
    args = f"--mode {mode} --listen {middle.upstream.ip}:{port} --to {middle.next_ip}:{port}"
    return (
        f"cd {GUEST_DIR} && echo $$ > {_pidfile(port)} && exec python3 -m guest.tools.proxy {args}"
    )


#: The most per-connection events (failures) of a proxy a run keeps.
MAX_EVENTS = 20


def proxy_events(stderr: str) -> list[dict]:
    """The per-connection events a proxy logged on stderr (JSON lines: a failed connect, a
    reset), the first MAX_EVENTS of them."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("{") and len(out) < MAX_EVENTS:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def proxy_figures(base: dict, stopped: dict, events: list[dict] | None = None) -> dict:
    """A proxy's figures: the base figures, the proxy's own stats, and bytes relayed per
    second (both directions, over the window) and system calls per MB relayed (1e6 bytes);
    its report and the connections' events (failures) under `proxy`."""
    stats = stopped["stats"]
    directions = [stats["client_to_server"], stats["server_to_client"]]
    relayed = sum(d["bytes"] for d in directions)
    syscalls = sum(d["syscalls"] for d in directions)
    seconds = base["seconds"]
    return {
        **base,
        "relayed_bytes": relayed,
        "relayed_bytes_per_s": round(relayed / seconds, 1) if seconds > 0 else None,
        "syscalls": syscalls,
        "syscalls_per_mb": round(syscalls / (relayed / 1e6), 2) if relayed else None,
        "user_copy_bytes": sum(d["user_copy_bytes"] for d in directions),
        "proxy": {**stopped, "events": events or []},
    }


def stopped_line(stdout: str) -> dict | None:
    """The proxy's `{"event": "stopped", ...}` line, if it printed one."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if data.get("event") == "stopped":
                    return data
    return None


class ProxyForwarder(Forwarder):
    """The proxy tool in `mode` (socket or splice) on every middle, each relaying to the next."""

    def __init__(self, transit: Transit, mode: str) -> None:
        super().__init__(transit)
        self.mode = mode
        self._running: list[tuple[Middle, RunningCommand]] = []

    @property
    def entry(self) -> str:
        return self.transit.middles[0].upstream.ip

    def start(self) -> None:
        port = self.transit.port
        # From the server's side back: each proxy exists before anything can connect to it.
        for middle in reversed(self.transit.middles):
            cmd = middle.guest.start(proxy_command(self.mode, middle, port))
            self._running.append((middle, cmd))
            try:
                wait_listening(middle.guest, port)
            except BenchError as err:
                if cmd.chan.exit_status_ready():  # it gave up: say why
                    why = cmd.wait(timeout=5).stderr.strip()[-400:]
                    raise BenchError(f"{middle.node}: the proxy did not start: {why}") from None
                raise err
        self._sample_all()

    def stop(self) -> dict[str, dict]:
        problems: list[str] = []
        figures: dict[str, dict] = {}
        try:
            figures = self._figures_all() if self._before else {}
        except (BenchError, GuestError) as err:
            problems.append(str(err))
        port = self.transit.port
        out: dict[str, dict] = {}
        for middle, cmd in self._running:
            try:
                middle.guest.run(
                    f"kill -TERM $(cat {_pidfile(port)}) 2>/dev/null; rm -f {_pidfile(port)}",
                    timeout=30,
                )
                result = cmd.wait(timeout=STOP_TIMEOUT_S)
            except GuestError as err:
                problems.append(f"{middle.node}: stopping the proxy: {err}")
                continue
            stopped = stopped_line(result.stdout)
            if stopped is None:
                problems.append(
                    f"{middle.node}: the proxy gave no report (exit {result.exit_status}): "
                    f"{result.stderr.strip()[-400:]}"
                )
            elif middle.node in figures:
                events = proxy_events(result.stderr)
                out[middle.node] = proxy_figures(figures[middle.node], stopped, events)
        self._running.clear()
        if problems:
            raise BenchError("; ".join(problems))
        # In path order, as the other modes give them.
        return {m.node: out[m.node] for m in self.transit.middles if m.node in out}


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class ForwardMode:
    """What a middle node does with an experiment's traffic (see the module's docstring)."""

    name: str
    #: One line for humans (lab files, README).
    summary: str
    #: Sets the mode up on a run's middles (see Forwarder).
    forwarder: Callable[[Transit], Forwarder]
    #: The transports it passes on (an experiment type's `transport`).
    carries: frozenset[str] = frozenset({"tcp", "icmp"})
    #: It terminates the ends' connections: the client connects to `Forwarder.entry`, and each
    #: end talks only to its neighbour on its own link (a user-level end needs no gateway).
    terminates: bool = False
    #: It needs a middle node: refused for an experiment whose client and server share a link.
    needs_middle: bool = True
    #: Anything else it cannot do for a type: the reason, or None.
    limits: Callable[[ExperimentType], str | None] = field(default=lambda kind: None)

    def refuses(self, kind: ExperimentType) -> str | None:
        """Why an experiment of type `kind` cannot run in this mode, or None if it can."""
        if kind.transport not in self.carries:
            carried = " and ".join(sorted(t.upper() for t in self.carries))
            return (
                f"forward {self.name} carries {carried} only; {kind.name} sends "
                f"{kind.transport.upper()}, which it cannot pass on"
            )
        return self.limits(kind)


DEFAULT_MODE = "kernel"

FORWARD_MODES: dict[str, ForwardMode] = {
    mode.name: mode
    for mode in (
        ForwardMode(
            "kernel",
            "Linux IP forwarding on every middle node",
            KernelForwarder,
            needs_middle=False,
        ),
        ForwardMode(
            "socket-proxy",
            "a TCP relay over kernel sockets on every middle (read and write, user copies)",
            lambda transit: ProxyForwarder(transit, "socket"),
            carries=frozenset({"tcp"}),
            terminates=True,
        ),
        ForwardMode(
            "splice-proxy",
            "a TCP relay over kernel sockets on every middle (splice, no user copy)",
            lambda transit: ProxyForwarder(transit, "splice"),
            carries=frozenset({"tcp"}),
            terminates=True,
        ),
    )
}


@dataclass
class ForwardedRun:
    """A run's forwarding: where its client connects, and (after it) each middle's figures."""

    mode: str
    entry: str
    middles: dict[str, dict] = field(default_factory=dict)


@contextlib.contextmanager
def forwarded(mode: ForwardMode, transit: Transit) -> Iterator[ForwardedRun]:
    """The mode set up on the transit's middles for the block, torn down after it, whatever
    happened; the middles' figures are in the yielded record once the block is left (an error
    of the block wins over one of the tear-down)."""
    forwarder = mode.forwarder(transit)
    run = ForwardedRun(mode.name, forwarder.entry)
    try:
        forwarder.start()
        yield run
    except BaseException:
        with contextlib.suppress(BenchError, GuestError):
            forwarder.stop()
        raise
    run.middles = forwarder.stop()

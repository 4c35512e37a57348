"""The middle nodes of a route, what every forwarding mode measures on them, and the base of a
mode's set-up (`Forwarder`): what `host.forwarding`'s registry and the modes' own modules share.

A mode that runs a program on each middle for the run (a proxy, the forwarding extension) is a
:class:`DaemonForwarder`: it starts the program on every middle from the server's side back, so
that each exists before anything can reach it, waits until it is ready, and at the end stops it
with SIGTERM (through a pid file, as the SSH channel cannot signal) and reads its last JSON line
(`{"event": "stopped", ...}`), which the mode turns into the middle's figures.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from host.experiments.base import BenchError
from host.ssh import GUEST_DIR, CommandResult, Guest, GuestError, RunningCommand

__all__ = [
    "DaemonForwarder",
    "Forwarder",
    "KernelForwarder",
    "Middle",
    "Sample",
    "Side",
    "Transit",
    "base_figures",
    "parse_sample",
    "relayed_figures",
    "sample",
    "stopped_line",
]

#: How long a stopped program may take to print its report and exit.
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Side:
    """A middle node's end of one link: the link, its address there and the prefix length of
    the link's subnet, its NIC (None if unknown)."""

    link: str
    ip: str
    nic: str | None = None
    prefix: int = 24

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefix}"

    @property
    def network(self) -> str:
        return str(ipaddress.IPv4Interface(self.cidr).network)


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
        "forwarded_packets_per_s": per_second(forwarded, seconds),
    }


def per_second(count: float, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def relayed_figures(base: dict, stats: dict, calls: str, count: Callable[[dict], int]) -> dict:
    """A relaying proxy's figures from its per-direction stats (`client_to_server`,
    `server_to_client`: `bytes`, `user_copy_bytes`): the base figures, the bytes relayed both
    ways and per second over the window, the bytes through its buffer, and the calls `count`
    finds in a direction, in total (as `calls`) and per MB relayed (1e6 bytes)."""
    directions = [stats["client_to_server"], stats["server_to_client"]]
    relayed = sum(d["bytes"] for d in directions)
    n = sum(count(d) for d in directions)
    return {
        **base,
        "relayed_bytes": relayed,
        "relayed_bytes_per_s": per_second(relayed, base["seconds"]),
        calls: n,
        f"{calls}_per_mb": round(n / (relayed / 1e6), 2) if relayed else None,
        "user_copy_bytes": sum(d["user_copy_bytes"] for d in directions),
    }


# --------------------------------------------------------------------------- forwarders


class Forwarder(ABC):
    """One run of a mode on every middle of a route: `start`, then the run (its client
    connects to `entry`), then `stop`, which returns each middle's figures by node name.

    `stop` is called whatever happened, also after a `start` that failed half-way: it tears
    down what was set up and raises BenchError (after tearing everything down) if a middle
    cannot give its figures."""

    #: The mode ends the client's connection on the first middle (a proxy), which the client
    #: then reaches on its own link; otherwise it talks to the server through the middles.
    terminates = False

    def __init__(self, transit: Transit) -> None:
        self.transit = transit
        self._before: dict[str, Sample] = {}

    @property
    def entry(self) -> str:
        """The address the client connects to: the first middle's on the client's link if the
        mode terminates, the server's otherwise."""
        return self.transit.middles[0].upstream.ip if self.terminates else self.transit.server_ip

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


def stopped_line(stdout: str) -> dict | None:
    """A program's `{"event": "stopped", ...}` line, if it printed one."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if data.get("event") == "stopped":
                    return data
    return None


def pidfile(name: str, port: int) -> str:
    return f"/run/stackbed-{name}-{port}.pid"


def daemon_command(name: str, port: int, module_and_args: str) -> str:
    """The shell command that runs `python3 -m MODULE ARGS` from the deployed guest package,
    recording its pid (the shell's, which `exec` hands to the program) for the stop."""
    return f"cd {GUEST_DIR} && echo $$ > {pidfile(name, port)} && exec python3 -m {module_and_args}"


class DaemonForwarder(Forwarder):
    """A program on every middle for the run (see the module's docstring). A subclass says
    what runs (`command`), how to know it is ready (`await_ready`; by default its ready line)
    and what its stopped line means (`figures`)."""

    #: Its name in the pid file and in errors ("the proxy did not start").
    name = "daemon"
    #: How long it may take to become ready (a user-level stack under TCG takes seconds).
    READY_TIMEOUT_S = 60.0

    def __init__(self, transit: Transit) -> None:
        super().__init__(transit)
        self._running: list[tuple[Middle, RunningCommand]] = []

    @abstractmethod
    def command(self, middle: Middle, index: int) -> str:
        """The shell command for `middle`, the `index`-th of the route (0 next to the client)."""

    @abstractmethod
    def figures(self, middle: Middle, base: dict, stopped: dict, result: CommandResult) -> dict:
        """The middle's figures from its base figures and the program's stopped line."""

    def files(self) -> list[str]:
        """Files the command leaves on the middle besides its pid file, removed at the stop."""
        return []

    def report(self, result: CommandResult) -> dict | None:
        """The program's report once stopped: its stopped line (None if it printed none)."""
        return stopped_line(result.stdout)

    def await_ready(self, middle: Middle, cmd: RunningCommand) -> None:
        """Returns once the program on `middle` said it is ready; BenchError if it cannot."""
        if cmd.wait_for_stdout('"event": "ready"', self.READY_TIMEOUT_S):
            return
        raise BenchError(
            f"{middle.node}: the {self.name} was not ready after {self.READY_TIMEOUT_S:.0f} s"
        )

    def start(self) -> None:
        middles = self.transit.middles
        # From the server's side back: each one exists before anything can reach it.
        for index in reversed(range(len(middles))):
            middle = middles[index]
            cmd = middle.guest.start(self.command(middle, index))
            self._running.append((middle, cmd))
            try:
                self.await_ready(middle, cmd)
            except BenchError as err:
                if cmd.chan.exit_status_ready():  # it gave up: say why
                    result = cmd.wait(timeout=5)
                    why = (result.stderr.strip() or result.stdout.strip())[-400:]
                    raise BenchError(
                        f"{middle.node}: the {self.name} did not start: {why}"
                    ) from None
                raise err
        self._sample_all()

    def stop(self) -> dict[str, dict]:
        problems: list[str] = []
        base: dict[str, dict] = {}
        try:
            base = self._figures_all() if self._before else {}
        except (BenchError, GuestError) as err:
            problems.append(str(err))
        pid = pidfile(self.name, self.transit.port)
        files = " ".join([pid, *self.files()])
        out: dict[str, dict] = {}
        for middle, cmd in self._running:
            try:
                middle.guest.run(f"kill -TERM $(cat {pid}) 2>/dev/null; rm -f {files}", timeout=30)
                result = cmd.wait(timeout=STOP_TIMEOUT_S)
            except GuestError as err:
                problems.append(f"{middle.node}: stopping the {self.name}: {err}")
                continue
            stopped = self.report(result)
            if stopped is None:
                problems.append(
                    f"{middle.node}: the {self.name} gave no report (exit {result.exit_status}): "
                    f"{result.stderr.strip()[-400:]}"
                )
            elif middle.node in base:
                out[middle.node] = self.figures(middle, base[middle.node], stopped, result)
        self._running.clear()
        if problems:
            raise BenchError("; ".join(problems))
        # In path order, as the other modes give them.
        return {m.node: out[m.node] for m in self.transit.middles if m.node in out}

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
* `haproxy`: Debian's haproxy on every middle, configured as one TCP relay and otherwise left
  at its defaults: the established proxy, as a reference row.
* `extension`: the confined forwarding extension on every middle, moving frames between
  its NICs' rings (host/user_forwarders.py); the client connects to the server, as with
  `kernel`. `extension-offload`: the same with GRO, TSO and checksum offload on the middles'
  NICs, as kernel forwarding has them: GRO's super-frames cross the engine whole.
* `stack-proxy-mono`, `stack-proxy-factored`: a TCP relay on our own user-level stack on both
  NICs of every middle (host/user_forwarders.py), reached as the kernel-socket proxies are.

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
The modes built on our own user-level code (`extension`, `stack-proxy-mono`,
`stack-proxy-factored`) are in `host.user_forwarders`; the shared base (middles, samples,
`Forwarder`, `DaemonForwarder`) is in `host.middles`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from host.experiments.base import BenchError, ExperimentType
from host.experiments.measure import wait_listening
from host.middles import (
    DaemonForwarder,
    Forwarder,
    KernelForwarder,
    Middle,
    Side,
    Transit,
    base_figures,
    daemon_command,
    parse_sample,
    pidfile,
    relayed_figures,
)
from host.ssh import CommandResult, GuestError, RunningCommand
from host.user_forwarders import ExtensionForwarder, StackProxyForwarder

__all__ = [
    "DEFAULT_MODE",
    "FORWARD_MODES",
    "ForwardMode",
    "Forwarder",
    "Middle",
    "Side",
    "Transit",
    "base_figures",
    "forwarded",
    "parse_sample",
    "proxy_command",
]

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
    return {
        **relayed_figures(base, stopped["stats"], "syscalls", lambda d: d["syscalls"]),
        "proxy": {**stopped, "events": events or []},
    }


def proxy_command(mode: str, middle: Middle, port: int) -> str:
    """The shell command that runs the proxy tool on `middle` (see `DaemonForwarder`)."""
    args = f"--mode {mode} --listen {middle.upstream.ip}:{port} --to {middle.next_ip}:{port}"
    return daemon_command("proxy", port, f"guest.tools.proxy {args}")


class ProxyForwarder(DaemonForwarder):
    """The proxy tool in `mode` (socket or splice) on every middle, each relaying to the next."""

    name = "proxy"
    terminates = True

    def __init__(self, transit: Transit, mode: str) -> None:
        super().__init__(transit)
        self.mode = mode

    def command(self, middle: Middle, index: int) -> str:
        return proxy_command(self.mode, middle, self.transit.port)

    def await_ready(self, middle: Middle, cmd: RunningCommand) -> None:
        wait_listening(middle.guest, self.transit.port)

    def figures(self, middle: Middle, base: dict, stopped: dict, result: CommandResult) -> dict:
        return proxy_figures(base, stopped, proxy_events(result.stderr))


def haproxy_config(middle: Middle, port: int) -> str:
    """haproxy's configuration for `middle`: one TCP relay, its defaults otherwise (timeouts
    longer than any run, so that none ends a connection)."""
    return (
        "global\n  maxconn 256\n"
        "defaults\n  mode tcp\n  timeout connect 10s\n  timeout client 600s\n"
        "  timeout server 600s\n"
        f"listen relay\n  bind {middle.upstream.ip}:{port}\n"
        f"  server next {middle.next_ip}:{port}\n"
    )


def haproxy_conf(port: int) -> str:
    return f"/run/stackbed-haproxy-{port}.cfg"


def haproxy_command(middle: Middle, port: int) -> str:
    """Writes the configuration next to the pid file and runs haproxy in the foreground."""
    conf = haproxy_conf(port)
    return (
        f"printf '%s' '{haproxy_config(middle, port)}' > {conf} && echo $$ > "
        f"{pidfile('haproxy', port)} && exec haproxy -db -f {conf}"
    )


class HaproxyForwarder(DaemonForwarder):
    """haproxy, Debian's, on every middle: the established proxy as a reference row, as iperf3
    is for the traffic tool. It reports nothing of its own: its figures are the base ones."""

    name = "haproxy"
    terminates = True

    def command(self, middle: Middle, index: int) -> str:
        return haproxy_command(middle, self.transit.port)

    def await_ready(self, middle: Middle, cmd: RunningCommand) -> None:
        wait_listening(middle.guest, self.transit.port)

    def files(self) -> list[str]:
        return [haproxy_conf(self.transit.port)]

    def report(self, result: CommandResult) -> dict | None:
        # SIGTERM stops haproxy at once: status 0, or 143 / -1 (SSH's "ended by a signal").
        if result.exit_status not in (0, 143, -1):
            return None
        return {"event": "stopped", "exit_status": result.exit_status}

    def figures(self, middle: Middle, base: dict, stopped: dict, result: CommandResult) -> dict:
        return {**base, "haproxy": {**stopped, "stderr": result.stderr.strip()[-400:]}}


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


def _relay(name: str, summary: str, forwarder: Callable[[Transit], Forwarder]) -> ForwardMode:
    """A proxy's mode: it relays TCP only and terminates the ends' connections."""
    return ForwardMode(name, summary, forwarder, carries=frozenset({"tcp"}), terminates=True)


FORWARD_MODES: dict[str, ForwardMode] = {
    mode.name: mode
    for mode in (
        ForwardMode(
            "kernel",
            "Linux IP forwarding on every middle node",
            KernelForwarder,
            needs_middle=False,
        ),
        _relay(
            "socket-proxy",
            "a TCP relay over kernel sockets on every middle (read and write, user copies)",
            lambda transit: ProxyForwarder(transit, "socket"),
        ),
        _relay(
            "splice-proxy",
            "a TCP relay over kernel sockets on every middle (splice, no user copy)",
            lambda transit: ProxyForwarder(transit, "splice"),
        ),
        _relay(
            "haproxy",
            "Debian's haproxy on every middle, its defaults: an established TCP proxy",
            HaproxyForwarder,
        ),
        ForwardMode(
            "extension",
            "a confined user-level extension forwarding IPv4 frames between the NICs' rings",
            ExtensionForwarder,
        ),
        ForwardMode(
            "extension-offload",
            "the extension with GRO and TSO on the NICs: super-frames through the engine",
            lambda transit: ExtensionForwarder(transit, offloads=True),
        ),
        _relay(
            "stack-proxy-mono",
            "a TCP relay on our monolithic stack on both NICs of every middle",
            lambda transit: StackProxyForwarder(transit, "mono"),
        ),
        _relay(
            "stack-proxy-factored",
            "a TCP relay as the confined application domain of our factored stacks",
            lambda transit: StackProxyForwarder(transit, "factored"),
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

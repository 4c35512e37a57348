"""A TCP proxy on our own user-level stack: the "customisable networking stack in a sandbox" of
issue 14 used as a middle node, against the kernel-socket proxies of `guest.tools.proxy`.

A middle node with two NICs runs one stack per NIC, as the traffic tool's `mono` and `factored`
paths start them (`guest.traffic.userstack`), each serving its own session socket. The relay is
an application of both: it listens on the stack of the client-facing NIC, connects for each
client through the stack of the server-facing NIC, and relays the bytes both ways, a half-close
passed on as in `guest.tools.proxy` (EOF becomes shutdown_write towards the other side once
everything before it is written; the connection ends when both directions have; a reset or
failed write closes both sides). At most `--max-conns` connections are relayed at a time; more
wait in the listening stack's backlog.

The relay is one thread over every socket: `session.wait_any` sleeps on all their doorbells at
once, so no thread per connection and no GIL handover per chunk. Each byte is copied twice in
user space (receive ring to the relay's buffer, buffer to the transmit ring), as the socket
proxy copies it from and to the kernel.

* `--path mono`: both stacks are monolithic processes; the relay runs in this process.
* `--path factored`: both stacks are factored (driver and protocol domains, confined), and the
  relay runs as their application domain (`appdomain.run_confined`: own uid, no capabilities,
  no_new_privs, seccomp `APP`). This process stays the root supervisor: it starts the stacks,
  opens the relay's sessions and its listener, forks the domain and lets go of its copies of
  the sessions, so that they end with the domain. If the domain dies, the stacks abort its
  connections (the ends see a reset, not a hang) and the supervisor starts a new domain on new
  sessions, listening again on the same port; the counters of a domain that died are lost with
  it, and `relay_domains` says how many did.

    python3 -m guest.tools.stack_proxy --path factored --listen-iface eth1 \\
        --listen-addr 198.18.80.2/24 --port 5001 --to-iface eth2 --to-addr 198.18.81.2/24 \\
        --to 198.18.81.1:5001

It prints `{"event": "ready", ...}` on stdout once listening (the stacks' own ready records,
and the relay's domain: pid, uid, confinement asked for) and, on SIGTERM/SIGINT, stops the
relay (open connections are aborted), then both stacks, and prints `{"event": "stopped",
"stats": {...}}`: `connections` (accepted, completed, failed, aborted, max_active), per
direction (`client_to_server`, `server_to_client`) the bytes relayed, receive and send calls,
bytes through the relay's buffer and half-closes passed on, `relay` (the loop's iterations and
sleeps, its CPU time, the doorbell counters of both sessions, and on `factored` the domain's
confinement record), `relay_domains` (started, died) and `stacks` (`listen` and `to`: each
stack's counters as it printed them on exit). Relay events worth knowing (a failed connect, a
domain that died) are JSON lines on stderr. A stack that cannot start is reported on stderr
with exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from guest.stack.device.kinds import DEFAULT_DEVICE, DEVICE_KINDS
from guest.stack.factored import sandbox
from guest.stack.factored.boundaries import BOUNDARIES, DEFAULT_BOUNDARY
from guest.stack.session import Pending, StackClient, StackListener, StackSocket, wait_any
from guest.traffic.appdomain import APP_UID, AppDomainError, run_confined
from guest.traffic.errors import TrafficError
from guest.traffic.userstack import FactoredProvider, MonoProvider

from .cli import positive_int, stop_on_signals
from .proxy import (
    DEFAULT_BUFFER,
    DEFAULT_MAX_CONNS,
    ConnectionStats,
    add_relay_options,
    connection_report,
    endpoint_arg,
    log_event,
)

PATHS = ("mono", "factored")
LISTEN_BACKLOG = 64
#: Longest sleep of the relay, so that a stop request is seen even when nothing happens.
IDLE_POLL_S = 0.1
#: A connect through the server-facing stack that takes longer is given up.
CONNECT_TIMEOUT_S = 10.0
#: How long a new relay domain retries its listen while the stack ends the dead one's session.
RELISTEN_S = 5.0
_EXIT_SETUP_ERROR = 1


# ===================================================================== one direction


@dataclass(slots=True)
class DirectionStats:
    """What one direction did, summed over every connection."""

    #: Bytes written to the receiving side's transmit ring.
    bytes: int = 0
    #: recv_into calls on the sending side (each found something: data or EOF).
    reads: int = 0
    #: send calls on the receiving side.
    writes: int = 0
    #: Bytes that passed through the relay's buffer (copied in, then out again).
    user_copy_bytes: int = 0
    #: EOFs passed on as shutdown_write to the other side.
    half_closes: int = 0


class Pump:
    """Moves bytes from `src` to `dst` through a buffer and passes the sender's EOF on. Its
    calls never block: reads only when `src.readable()`, writes only while `dst.writable()`."""

    def __init__(
        self, src: StackSocket, dst: StackSocket, stats: DirectionStats, size: int
    ) -> None:
        self.src = src
        self.dst = dst
        self.stats = stats
        self._view = memoryview(bytearray(size))
        self._start = 0
        self._end = 0
        self.eof = False
        self.done = False

    @property
    def wants_read(self) -> bool:
        return not self.eof and self._end < len(self._view)

    @property
    def pending(self) -> int:
        return self._end - self._start

    def step(self) -> bool:
        """One read if there is something to read, then write what the receiver takes; True
        if anything moved. OSError (reset, broken pipe) ends the connection."""
        moved = False
        if self.wants_read and self.src.readable():
            self.stats.reads += 1
            n = self.src.recv_into(self._view[self._end :])
            if n == 0:
                self.eof = True
            self._end += n
            self.stats.user_copy_bytes += n
            moved = True
        while self._start < self._end and self.dst.writable():
            self.stats.writes += 1
            n = self.dst.send(self._view[self._start : self._end])
            self._start += n
            self.stats.bytes += n
            moved = True
        if self._start == self._end:
            self._start = self._end = 0
            if self.eof and not self.done:
                self.dst.shutdown_write()
                self.stats.half_closes += 1
                self.done = True
                moved = True
        return moved


# ===================================================================== the relay


class Connection:
    def __init__(self, client: StackSocket, connecting: Pending[StackSocket]) -> None:
        self.client = client
        self.server: StackSocket | None = None
        self.connecting: Pending[StackSocket] | None = connecting
        self.deadline = time.monotonic() + CONNECT_TIMEOUT_S
        self.pumps: tuple[Pump, ...] = ()


class Relay:
    """Accepts on `listener`, connects through `outside` to `to`, relays; `serve()` loops."""

    def __init__(
        self,
        listener: StackListener,
        outside: StackClient,
        to: tuple[str, int],
        *,
        max_conns: int = DEFAULT_MAX_CONNS,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self.listener = listener
        self.outside = outside
        self.to = to
        self.max_conns = max_conns
        self.buffer = buffer
        self.conns = ConnectionStats()
        self.directions = (DirectionStats(), DirectionStats())
        self.active: list[Connection] = []
        self.loops = 0
        self.sleeps = 0
        self._accepting: Pending | None = None
        #: Cancelled connects, collected once answered (their socket closed, if any).
        self._abandoned: list[Pending[StackSocket]] = []
        self._cpu = 0.0
        self._elapsed = 0.0

    def serve(self, should_stop: Callable[[], bool]) -> None:
        started, cpu = time.monotonic(), time.process_time()
        try:
            while not should_stop():
                self.loops += 1
                if not self._step():
                    self.sleeps += 1
                    self._sleep()
        finally:
            self._cpu += time.process_time() - cpu
            self._elapsed += time.monotonic() - started

    def _step(self) -> bool:
        busy = self._accept()
        for conn in list(self.active):
            try:
                if conn.connecting is not None:
                    busy |= self._connect(conn)
                    continue
                for pump in conn.pumps:
                    busy |= pump.step()
            except OSError as exc:
                log_event("connection_failed", error=exc.strerror or str(exc))
                self._finish(conn, failed=True)
                busy = True
                continue
            if conn.pumps and all(p.done for p in conn.pumps):
                self._finish(conn, failed=False)
        for pending in list(self._abandoned):
            if pending.done():
                self._abandoned.remove(pending)
                with contextlib.suppress(OSError):
                    pending.result().close()
        return busy

    def _sleep(self) -> None:
        readers, writers, pending = [], [], []
        if self._accepting is not None:
            pending.append(self._accepting)
        pending += self._abandoned
        for conn in self.active:
            if conn.connecting is not None:
                pending.append(conn.connecting)
            for pump in conn.pumps:
                if pump.wants_read:
                    readers.append(pump.src)
                if pump.pending:
                    writers.append(pump.dst)
        wait_any(readers, writers, pending, timeout=IDLE_POLL_S)

    def _accept(self) -> bool:
        if self._accepting is None:
            if len(self.active) >= self.max_conns:
                return False
            self._accepting = self.listener.accept_start()
        if not self._accepting.done():
            return False
        accepting, self._accepting = self._accepting, None
        try:
            client, _peer = accepting.result()
        except OSError as exc:
            log_event("accept_failed", error=exc.strerror or str(exc))
            raise  # the listener's stack is gone: nothing more to relay
        self.conns.accepted += 1
        try:
            connecting = self.outside.connect_start(self.to)
        except OSError as exc:
            client.close()
            self.conns.failed += 1
            log_event("connect_failed", error=exc.strerror or str(exc))
            return True
        self.active.append(Connection(client, connecting))
        self.conns.max_active = max(self.conns.max_active, len(self.active))
        return True

    def _connect(self, conn: Connection) -> bool:
        """The connect through the outside stack finished: give the connection its pumps."""
        assert conn.connecting is not None
        if not conn.connecting.done():
            if time.monotonic() < conn.deadline:
                return False
            conn.connecting.cancel()
            self._abandoned.append(conn.connecting)
            conn.connecting = None
            raise TimeoutError(f"connect to {self.to[0]}:{self.to[1]} timed out")
        connecting, conn.connecting = conn.connecting, None
        try:
            conn.server = connecting.result()
        except OSError as exc:
            log_event("connect_failed", error=exc.strerror or str(exc))
            raise
        up, down = self.directions
        conn.pumps = (
            Pump(conn.client, conn.server, up, self.buffer),
            Pump(conn.server, conn.client, down, self.buffer),
        )
        return True

    def _finish(self, conn: Connection, *, failed: bool) -> None:
        self._drop(conn)
        self.conns.ended(failed=failed)

    def _drop(self, conn: Connection) -> None:
        self.active.remove(conn)
        if conn.connecting is not None:
            with contextlib.suppress(OSError):
                conn.connecting.cancel()
            self._abandoned.append(conn.connecting)
            conn.connecting = None
        for sock in (conn.client, conn.server):
            if sock is not None:
                sock.close()

    def close(self) -> None:
        """Close every connection (counted as aborted) and the listener."""
        for conn in list(self.active):
            self._drop(conn)
            self.conns.aborted += 1
        if self._accepting is not None:
            with contextlib.suppress(OSError):
                self._accepting.cancel()
        self.listener.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = connection_report(self.conns, map(asdict, self.directions))
        out["relay"] = {
            "loops": self.loops,
            "sleeps": self.sleeps,
            "cpu_s": round(self._cpu, 3),
            "elapsed_s": round(self._elapsed, 3),
            "doorbells": {
                "listen": asdict(self.listener._client.bell_stats),
                "to": asdict(self.outside.bell_stats),
            },
        }
        return out


def relay_until_stopped(relay: Relay) -> dict[str, Any]:
    """Relay until SIGTERM or SIGINT (the domain's own handlers), then close; the counters."""
    should_stop = stop_on_signals()
    try:
        relay.serve(should_stop)
    finally:
        relay.close()
    return relay.stats()


# ===================================================================== the supervisor


def _stack_args(args: argparse.Namespace, side: str) -> argparse.Namespace:
    """What `userstack`'s providers read from the traffic tool's options, for one NIC."""
    return argparse.Namespace(
        iface=getattr(args, f"{side}_iface"),
        addr=getattr(args, f"{side}_addr"),
        stack_socket=None,
        stack_gateway=args.gateway if side == "to" else None,
        stack_device=args.device,
        stack_offload=args.offload,
        stack_link=args.link,
        confine_stack=args.confine_stack,
    )


def _listen(client: StackClient, port: int) -> StackListener:
    """Listen on `port`, retrying while the stack still holds a dead domain's listener."""
    deadline = time.monotonic() + RELISTEN_S
    while True:
        try:
            return client.listen(port, LISTEN_BACKLOG)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class Supervisor:
    """Starts the two stacks and the relay (in process, or as a confined domain restarted when
    it dies), stops it all on request."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.to = args.to
        provider = MonoProvider if args.path == "mono" else FactoredProvider
        self.stop = False
        self.child = 0
        self.domains = {"started": 0, "died": 0}
        self.providers: dict[str, MonoProvider] = {}
        try:
            for side in ("listen", "to"):
                self.providers[side] = provider(_stack_args(args, side))
        except BaseException:
            self.close()  # the stack already started, if any
            raise

    def request_stop(self, *_args: object) -> None:
        self.stop = True
        if self.child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGTERM)

    def ready(self, relay: dict[str, Any]) -> None:
        args = self.args
        listen_ip = str(ipaddress.ip_interface(args.listen_addr).ip)
        record = {
            "event": "ready",
            "path": args.path,
            "listen": f"{listen_ip}:{args.port}",
            "listen_iface": args.listen_iface,
            "to": f"{self.to[0]}:{self.to[1]}",
            "to_iface": args.to_iface,
            "max_conns": args.max_conns,
            "buffer": args.buffer,
            "pid": os.getpid(),
            "relay": relay,
            "stacks": {side: getattr(p, "stack", None) for side, p in self.providers.items()},
        }
        print(json.dumps(record), flush=True)

    def _relay(self, listen: StackClient, outside: StackClient) -> Relay:
        listener = _listen(listen, self.args.port)
        return Relay(
            listener, outside, self.to, max_conns=self.args.max_conns, buffer=self.args.buffer
        )

    def run(self) -> dict[str, Any]:
        """Relay until asked to stop; the relay's counters."""
        listen, outside = self.providers["listen"], self.providers["to"]
        why = sandbox.supported() if self.args.path == "factored" else "mono path: no domains"
        if why is not None:  # the relay in this process
            relay = self._relay(listen.client, outside.client)
            self.domains["started"] += 1
            self.ready({"domain": "in-process", "pid": os.getpid(), "confined": False, "why": why})
            stats = relay_until_stopped(relay)
            stats["relay"]["domain"] = {"confined": False, "why": why}
            return stats
        clients = (listen.client, outside.client)  # the first domain's sessions
        stats: dict[str, Any] = {}
        while not self.stop:
            relay = self._relay(*clients)

            def forked(pid: int, clients: tuple[StackClient, ...] = clients) -> None:
                self.child = pid
                self.domains["started"] += 1
                for client in clients:  # the domain alone holds its sessions now
                    client.close()
                if self.domains["started"] == 1:
                    domain = {"domain": "app", "pid": pid, "uid": APP_UID, "confined": True}
                    self.ready(domain)
                else:
                    log_event("relay_restarted", pid=pid)
                if self.stop:  # asked while forking
                    self.request_stop()

            try:
                stats, domain = run_confined(
                    lambda relay=relay: relay_until_stopped(relay), on_fork=forked
                )
                stats["relay"]["domain"] = domain
                break
            except AppDomainError as exc:
                self.domains["died"] += 1
                log_event("relay_died", pid=self.child, error=str(exc))
            finally:
                self.child = 0
                for client in clients:
                    client.close()
            if not self.stop:  # a new domain on new sessions (the old ones ended with it)
                clients = (StackClient(listen.path), StackClient(outside.path))
        return stats

    def close(self) -> dict[str, Any]:
        """Stop both stacks; their counters."""
        out: dict[str, Any] = {}
        for side, provider in self.providers.items():
            try:
                out[side] = provider.close()
            except Exception as exc:  # the other stack must still be stopped
                out[side] = {"close_error": str(exc)}
        return out


# ===================================================================== command line


_endpoint = endpoint_arg(listen=False)


def _ipv4_endpoint(text: str) -> tuple[str, int]:
    family, addr = _endpoint(text)
    if family != socket.AF_INET:  # our stack speaks IPv4 only
        raise argparse.ArgumentTypeError(f"not an IPv4 address: {text!r}")
    return addr


_ipv4_endpoint.__name__ = "address"


def _cidr(text: str) -> str:
    try:
        ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python3 -m guest.tools.stack_proxy",
        description="Relay TCP connections between two NICs, each served by our own stack.",
    )
    ap.add_argument("--path", choices=PATHS, default="mono", help="the stacks (and the relay)")
    ap.add_argument("--listen-iface", required=True, metavar="IF", help="the clients' NIC")
    ap.add_argument(
        "--listen-addr", required=True, type=_cidr, metavar="CIDR", help="its stack's address"
    )
    ap.add_argument("--port", required=True, type=positive_int, help="where clients connect")
    ap.add_argument("--to-iface", required=True, metavar="IF", help="the server's NIC")
    ap.add_argument(
        "--to-addr", required=True, type=_cidr, metavar="CIDR", help="its stack's address"
    )
    ap.add_argument(
        "--to", required=True, type=_ipv4_endpoint, metavar="HOST:PORT", help="the real server"
    )
    ap.add_argument("--gateway", metavar="ADDR", help="--to-iface stack's default gateway")
    add_relay_options(ap, buffer_help="the relay's buffer per direction and connection")
    ap.add_argument("--device", choices=tuple(DEVICE_KINDS), default=DEFAULT_DEVICE)
    ap.add_argument(
        "--offload", default="all", help="both stacks' offload levers: none, all, or a list"
    )
    ap.add_argument(
        "--link",
        choices=tuple(BOUNDARIES),
        default=DEFAULT_BOUNDARY,
        help="factored only: the driver<->protocol boundary (default %(default)s)",
    )
    ap.add_argument(
        "--no-confine-stack",
        dest="confine_stack",
        action="store_false",
        help="factored only: the stacks' domains as root without seccomp",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.listen_iface == args.to_iface:
        print("stack_proxy: --listen-iface and --to-iface must differ", file=sys.stderr)
        return _EXIT_SETUP_ERROR
    supervisor: Supervisor | None = None
    early_stop = False

    def request_stop(*_args: object) -> None:
        nonlocal early_stop
        early_stop = True
        if supervisor is not None:
            supervisor.request_stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stats: dict[str, Any] = {}
    started = time.monotonic()
    try:
        try:
            supervisor = Supervisor(args)
        except (TrafficError, OSError) as exc:
            print(f"stack_proxy: {exc}", file=sys.stderr)
            return _EXIT_SETUP_ERROR
        supervisor.stop = early_stop
        if not early_stop:
            stats = supervisor.run()
    finally:
        if supervisor is not None:
            stats["relay_domains"] = supervisor.domains
            stats["stacks"] = supervisor.close()
    final = {
        "event": "stopped",
        "path": args.path,
        "elapsed_s": round(time.monotonic() - started, 3),
        "stats": stats,
    }
    print(json.dumps(final, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `mono` and `factored` paths: the traffic tool as an application of our user-level stack.

The tool talks to a stack process through the session boundary (`guest.stack.session`). When no
stack serves the interface yet, the provider starts one for the run (`guest.stack.mono` or
`guest.stack.factored`) and stops it afterwards, so one command is enough on a bare Linux host;
a stack started on its own (long-running, shared by several runs) is found by its socket and
reused.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys

from guest.stack.options import DEFAULT_LINGER_S, default_socket_path
from guest.stack.session.client import StackClient, StackListener, StackSocket
from guest.stack.tcp.controllers import DEFAULT_CC

from .errors import TrafficError

START_TIMEOUT_S = 30.0


def _serving(path: str) -> bool:
    """A stack answers on `path` (a stale socket file of a dead stack does not)."""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _injected(args: argparse.Namespace) -> float:
    """The fault-injection knob (`--stack-inject-rx-us`), 0 when off or not offered."""
    return float(getattr(args, "stack_inject_rx_us", 0.0) or 0.0)


class _Stream:
    """A StackSocket with the traffic tool's Stream interface and the idle timeout applied."""

    def __init__(self, sock: StackSocket, timeout: float):
        sock.settimeout(timeout)
        self._sock = sock

    def sendall(self, data: bytes | memoryview) -> None:
        self._sock.sendall(data)

    def recv_into(self, buf: memoryview) -> int:
        return self._sock.recv_into(buf)

    def shutdown_write(self) -> None:
        self._sock.shutdown_write()

    def close(self) -> None:
        self._sock.close()


class _Listener:
    def __init__(self, listener: StackListener, timeout: float):
        self._listener = listener
        self._timeout = timeout
        self.port = listener.port

    def accept(self) -> _Stream:
        sock, _peer = self._listener.accept(timeout=self._timeout)
        return _Stream(sock, self._timeout)

    def close(self) -> None:
        self._listener.close()


class MonoProvider:
    """Sockets of the monolithic user-level stack (one stack process: driver + protocols)."""

    name = "mono"
    stack_module = "guest.stack.mono"

    def __init__(self, args: argparse.Namespace):
        self.iface: str | None = args.iface
        self.path = args.stack_socket or (default_socket_path(args.iface) if args.iface else None)
        if self.path is None:
            raise TrafficError(f"--path {self.name} needs --iface (and --addr to start a stack)")
        self._proc: subprocess.Popen | None = None
        if not _serving(self.path):
            self._start_stack(args)
        self.client = StackClient(self.path)

    def stack_command(self, args: argparse.Namespace) -> list[str]:
        """The command that starts a stack for the run on --iface at --addr."""
        gateway = getattr(args, "stack_gateway", None)
        return [
            sys.executable,
            "-m",
            self.stack_module,
            "--iface",
            str(self.iface),
            "--addr",
            args.addr,
            "--socket",
            str(self.path),
            "--device",
            args.stack_device,
            "--offload",
            args.stack_offload,
            "--cc",
            getattr(args, "stack_cc", None) or DEFAULT_CC,
            *(["--gateway", gateway] if gateway else []),
            *(["--inject-rx-us", str(inject)] if (inject := _injected(args)) else []),
            *(["--profile"] if getattr(args, "stack_profile", False) else []),
            *self.extra_stack_args(args),
        ]

    def _start_stack(self, args: argparse.Namespace) -> None:
        if not args.addr:
            raise TrafficError(
                f"no stack serves {self.path}: give --addr CIDR to start one on {self.iface}"
            )
        cmd = self.stack_command(args)
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT_S)
        line = self._proc.stdout.readline() if ready else ""
        if not line.startswith('{"event": "ready"'):
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                proc.kill()
            err = proc.communicate()[1][-600:]
            raise TrafficError(
                f"the {self.name} stack did not start on {self.iface}: "
                f"{line.strip() or 'no answer'} {err.strip()}"
            )
        self.stack = json.loads(line)

    def extra_stack_args(self, args: argparse.Namespace) -> list[str]:
        """Options only this path's stack takes."""
        return []

    def connect(self, peer: str, port: int, *, timeout: float, nodelay: bool) -> _Stream:
        return _Stream(self.client.connect((peer, port), timeout=timeout), timeout)

    def listen(self, bind: str, port: int, *, timeout: float, nodelay: bool) -> _Listener:
        return _Listener(self.client.listen(port), timeout)

    def close(self) -> dict | None:
        """Leave the stack as found: one this provider started is stopped. Returns the
        counters that stack printed on exit (None for a reused stack, or on a second call)."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
            self.client = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
        try:
            # The stack lingers until its close handshakes are done (DEFAULT_LINGER_S at most).
            out, _err = proc.communicate(timeout=DEFAULT_LINGER_S + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _err = proc.communicate()
        for line in reversed(out.splitlines()):
            if line.startswith('{"event": "stopped"'):
                return json.loads(line).get("stats")
        return None


class FactoredProvider(MonoProvider):
    """Sockets of the factored user-level stack (driver and protocol domains, confined): the
    same session boundary, so the application side is the monolithic one unchanged."""

    name = "factored"
    stack_module = "guest.stack.factored"
    #: The workload runs as its own confined application domain (`appdomain`).
    app_domains = True

    def extra_stack_args(self, args: argparse.Namespace) -> list[str]:
        return ["--link", args.stack_link, *([] if args.confine_stack else ["--no-confine"])]

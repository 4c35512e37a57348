"""The stack proxy's relay in one process, over the fake session backend: a client session
through the relay to the fake stack's echo service and back, several connections at once,
half-close passed on, and a refused server counted as a failed connection (the namespace tests
in tests/netns/test_stack_proxy.py run it on real stacks)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from guest.stack.session import StackClient
from guest.tools.stack_proxy import Relay
from tests.unit.test_session_server import REMOTE, Stack, echo_roundtrip, stack, until

__all__ = ["stack"]  # the fixture, used by name below
PORT = 5050


@pytest.fixture
def relay(stack: Stack) -> Iterator[tuple[Relay, StackClient]]:
    """A relay listening on PORT of the fake stack, relaying to its echo service, served in a
    thread until the test ends; and a client session for the test."""
    inside, outside = StackClient(stack.path), StackClient(stack.path)
    relay = Relay(inside.listen(PORT), outside, (REMOTE, 7), buffer=64 * 1024)
    stop = threading.Event()
    thread = threading.Thread(target=relay.serve, args=(stop.is_set,), daemon=True)
    thread.start()
    with StackClient(stack.path) as app:
        yield relay, app
    stop.set()
    thread.join(5)
    relay.close()
    inside.close()
    outside.close()


def test_echo_through_the_relay_with_half_close(relay: tuple[Relay, StackClient]) -> None:
    proxy, app = relay
    socks = [app.connect(("198.18.0.1", PORT), timeout=5) for _ in range(3)]
    data = [random.Random(i).randbytes(300_000 + i) for i in range(3)]
    for sock, payload in zip(socks, data, strict=True):
        assert echo_roundtrip(sock, payload) == payload
    for sock in socks:
        sock.shutdown_write()
        assert sock.recv(10) == b""  # our FIN to echo, echo's FIN back through the relay
        sock.close()
    until(lambda: proxy.conns.completed == 3)
    total = sum(map(len, data))
    up, down = proxy.directions
    assert up.bytes == down.bytes == up.user_copy_bytes == total
    assert up.half_closes == down.half_closes == 3
    assert proxy.conns.max_active >= 1 and proxy.conns.failed == 0


def test_a_refused_server_fails_the_connection(stack: Stack) -> None:
    with StackClient(stack.path) as inside, StackClient(stack.path) as app:
        proxy = Relay(inside.listen(PORT), inside, (REMOTE, 4444))
        stop = threading.Event()
        thread = threading.Thread(target=proxy.serve, args=(stop.is_set,), daemon=True)
        thread.start()
        sock = app.connect(("198.18.0.1", PORT), timeout=5)
        sock.settimeout(5)
        assert sock.recv(10) == b""  # closed by the relay
        until(lambda: proxy.conns.failed == 1)
        stop.set()
        thread.join(5)
        proxy.close()


def test_command_line_errors_are_one_line() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "guest.tools.stack_proxy", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    base = ["--listen-iface", "x0", "--listen-addr", "198.18.0.1/24", "--port", "1"]
    bad = run(*base, "--to-iface", "x1", "--to-addr", "198.18.1.1/24", "--to", "[::1]:80")
    assert bad.returncode == 2 and "not an IPv4 address" in bad.stderr
    same = run(*base, "--to-iface", "x0", "--to-addr", "198.18.1.1/24", "--to", "198.18.1.2:80")
    assert same.returncode == 1 and "must differ" in same.stderr

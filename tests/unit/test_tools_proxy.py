"""The kernel-socket proxy's command line and a relay on loopback, in both modes.

The errors a user meets first (a malformed address, a port already taken, no splice) must be
one clear line and a non-zero exit; the relay itself is exercised end to end, half-close
included, without namespaces (the namespace tests in tests/netns/test_proxy.py do the rest).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from guest.tools import proxy as proxy_mod
from guest.tools.proxy import Proxy, ProxyError, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guest.tools.proxy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=30,
        check=False,
    )


def test_parse_endpoint() -> None:
    inet = (socket.AF_INET, ("198.18.80.2", 5001))
    assert parse_endpoint("198.18.80.2:5001", listen=False) == inet
    assert parse_endpoint("127.0.0.1:0", listen=True)[1] == ("127.0.0.1", 0)
    assert parse_endpoint("[::1]:80", listen=False) == (socket.AF_INET6, ("::1", 80))


@pytest.mark.parametrize(
    ("to", "says"),
    [
        ("198.18.81.1", "expected HOST:PORT"),
        (":5001", "expected HOST:PORT"),
        ("198.18.81.1:http", "expected HOST:PORT"),
        ("198.18.81.1:0", "port out of range"),
        ("198.18.81.1:70000", "port out of range"),
    ],
)
def test_bad_to_is_a_usage_error(to: str, says: str) -> None:
    done = _run("--listen", f"{LOOPBACK}:0", "--to", to)
    assert done.returncode == 2, done
    assert "--to" in done.stderr and says in done.stderr, done.stderr
    assert done.stdout == ""


def test_bad_mode_and_max_conns_are_usage_errors() -> None:
    base = ("--listen", f"{LOOPBACK}:0", "--to", f"{LOOPBACK}:9")
    assert _run(*base, "--mode", "zerocopy").returncode == 2
    done = _run(*base, "--max-conns", "0")
    assert done.returncode == 2 and "must be >= 1" in done.stderr, done.stderr


def test_port_in_use_is_one_clear_line() -> None:
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        done = _run("--listen", f"{LOOPBACK}:{port}", "--to", f"{LOOPBACK}:9")
    assert done.returncode == 1, done
    assert done.stderr.strip() == (
        f"proxy: cannot listen on {LOOPBACK}:{port}: Address already in use"
    ), done.stderr
    assert done.stdout == ""  # never announced ready


def test_splice_missing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(proxy_mod.os, "splice")
    listen = parse_endpoint(f"{LOOPBACK}:0", listen=True)
    with pytest.raises(ProxyError, match=r"splice mode unavailable: os\.splice"):
        Proxy("splice", listen, listen)


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.parametrize("mode", proxy_mod.MODES)
def test_relay_on_loopback_with_half_close(mode: str) -> None:
    """The client sends, shuts its write side, and the server answers only after that EOF;
    both payloads arrive whole, the counters match, and closing leaves no descriptor open."""
    up, down = os.urandom(300_000), os.urandom(700_000)
    before = _open_fds()
    server = socket.create_server((LOOPBACK, 0))
    got: dict[str, bytes] = {}

    def serve_one() -> None:
        conn, _ = server.accept()
        with conn:
            got["server"] = _read_to_eof(conn)
            conn.sendall(down)

    proxy = Proxy(
        mode,
        parse_endpoint(f"{LOOPBACK}:0", listen=True),
        parse_endpoint(f"{LOOPBACK}:{server.getsockname()[1]}", listen=False),
        buffer=65536,
    )
    stop = threading.Event()
    threads = [
        threading.Thread(target=serve_one),
        threading.Thread(target=proxy.serve, args=(stop.is_set,)),
    ]
    try:
        for t in threads:
            t.start()
        with socket.create_connection(proxy.address, timeout=10) as client:
            client.sendall(up)
            client.shutdown(socket.SHUT_WR)
            got["client"] = _read_to_eof(client)
        threads[0].join(10)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        proxy.close()
        server.close()
    assert got["server"] == up and got["client"] == down
    stats = proxy.stats()
    assert stats["connections"] == {
        "accepted": 1, "completed": 1, "failed": 0, "aborted": 0, "max_active": 1,
    }  # fmt: skip
    for name, payload in (("client_to_server", up), ("server_to_client", down)):
        d = stats[name]
        assert isinstance(d, dict) and d["bytes"] == len(payload) and d["half_closes"] == 1
        assert d["user_copy_bytes"] == (len(payload) if mode == "socket" else 0), d
    assert _open_fds() == before


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)

"""Tests for guest/traffic.py: real subprocesses talking over 127.0.0.1, plus pure helpers.

The servers are started with ``--port 0`` and report their bound port on stderr, so there is no
"find a free port, then hope nobody takes it" race.
"""

from __future__ import annotations

import hashlib
import json
import random
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from guest.traffic import Pattern, latency_summary_us, parse_proc_stat, percentile

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
BLOCK_LEN = 1_000_003  # the documented pattern period; re-stated here on purpose
RUN_TIMEOUT_S = 15


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "guest.traffic", *args]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(*args), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def _single_json(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, f"expected exactly one stdout line, got {lines!r}"
    return json.loads(lines[0])


class Server:
    """A server subprocess on an ephemeral loopback port, known from its 'listening' event."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            _cmd(*args, "--bind", LOOPBACK, "--port", "0", "--timeout", "10"),
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.port = self._await_listening()

    def _await_listening(self, timeout: float = 10.0) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if ready:
                line = self.proc.stderr.readline()
                if not line:
                    break
                event = json.loads(line)
                if event.get("event") == "listening":
                    return int(event["port"])
        self.proc.kill()
        raise AssertionError(f"server never reported listening: {self.proc.communicate()!r}")

    def result(self) -> dict[str, Any]:
        stdout, stderr = self.proc.communicate(timeout=RUN_TIMEOUT_S)
        assert self.proc.returncode == 0, stderr
        return _single_json(stdout.decode())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def servers() -> Any:
    started: list[Server] = []

    def start(*args: str) -> Server:
        server = Server(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def _expected_stream_sha256(seed: int, length: int) -> str:
    """Independent re-statement of the payload definition: the seeded block, repeated."""
    block = random.Random(seed).randbytes(BLOCK_LEN)
    stream = (block * (length // BLOCK_LEN + 1))[:length]
    return hashlib.sha256(stream).hexdigest()


def _client_ok(*args: str) -> dict[str, Any]:
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    return _single_json(proc.stdout)


# ---- end-to-end ---------------------------------------------------------------------------


def test_source_sink_bytes_mode_hashes_match_seeded_stream(servers: Any) -> None:
    # > 2 block periods and not a multiple of msg-size: exercises wrap-around and a short last write
    length, seed = 2 * BLOCK_LEN + 12_345, 7
    sink = servers("sink", "--msg-size", "8192", "--label", "t1")
    sent = _client_ok(
        "source",
        "--peer",
        LOOPBACK,
        "--port",
        str(sink.port),
        "--bytes",
        str(length),
        "--seed",
        str(seed),
        "--msg-size",
        "65536",
        "--label",
        "t1",
    )
    got = sink.result()

    expected = _expected_stream_sha256(seed, length)
    assert sent["sha256"] == got["sha256"] == expected
    assert sent["bytes"] == got["bytes"] == length
    assert (sent["role"], got["role"]) == ("source", "sink")
    for record in (sent, got):
        assert record["tool"] == "stackbed-traffic"
        assert record["version"] == 1
        assert record["path"] == "kernel"
        assert record["label"] == "t1"
        assert record["port"] == sink.port
        assert record["seconds"] > 0
        assert record["mbit_per_s"] == pytest.approx(length * 8 / record["seconds"] / 1e6)
        assert record["cpu_process"] >= 0
        assert record["ncpus"] >= 1
        assert record["cpu_system"] is None or 0 <= record["cpu_system"] <= 1
    assert sent["peer"] == LOOPBACK and got["bind"] == LOOPBACK
    assert (sent["msg_size"], got["msg_size"]) == (65536, 8192)


@pytest.mark.parametrize("cc", ["reno", None])
def test_the_kernel_sender_uses_and_reports_the_congestion_control_asked(
    servers: Any, cc: str | None
) -> None:
    """A host's default may be BBR while a Debian guest's is CUBIC; a comparison with Linux
    must be able to say which Linux it was, and choose."""
    sink = servers("sink")
    chosen = ["--kernel-cc", cc] if cc else []
    sent = _client_ok("source", "--peer", LOOPBACK, "--port", str(sink.port), "--bytes", "1000",
                      *chosen)  # fmt: skip
    sink.result()
    default = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    assert sent["tcp_congestion"] == (cc or default)


def test_source_seed_changes_hash(servers: Any) -> None:
    sink = servers("sink")
    sent = _client_ok(
        "source", "--peer", LOOPBACK, "--port", str(sink.port), "--bytes", "5000", "--seed", "2"
    )
    assert sink.result()["sha256"] == sent["sha256"] == _expected_stream_sha256(2, 5000)
    assert sent["sha256"] != _expected_stream_sha256(1, 5000)


def test_source_sink_duration_mode(servers: Any) -> None:
    sink = servers("sink")
    started = time.monotonic()
    sent = _client_ok(
        "source",
        "--peer",
        LOOPBACK,
        "--port",
        str(sink.port),
        "--duration",
        "0.5",
        "--msg-size",
        "1000",
    )
    elapsed = time.monotonic() - started
    got = sink.result()

    assert 0.5 <= sent["seconds"] < 5 and elapsed < 8
    assert sent["bytes"] == got["bytes"] > 0
    assert sent["bytes"] % 1000 == 0  # duration mode only does full writes
    assert sent["sha256"] == got["sha256"] == _expected_stream_sha256(1, sent["bytes"])


def test_no_hash_reports_null_sha256(servers: Any) -> None:
    sink = servers("sink", "--no-hash")
    sent = _client_ok(
        "source", "--peer", LOOPBACK, "--port", str(sink.port), "--bytes", "100000", "--no-hash"
    )
    got = sink.result()
    assert sent["sha256"] is None and got["sha256"] is None
    assert sent["bytes"] == got["bytes"] == 100_000


def test_rr_count_mode(servers: Any) -> None:
    server = servers("rr-server", "--req-size", "10", "--resp-size", "300")
    client = _client_ok(
        "rr-client",
        "--peer",
        LOOPBACK,
        "--port",
        str(server.port),
        "--count",
        "200",
        "--req-size",
        "10",
        "--resp-size",
        "300",
    )
    served = server.result()

    assert client["transactions"] == served["transactions"] == 200
    assert client["bytes"] == served["bytes"] == 200 * 310
    assert (client["req_size"], client["resp_size"]) == (10, 300)
    lat = client["latency_us"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert client["transactions_per_s"] == pytest.approx(200 / client["seconds"])
    assert served["latency_us"]["p50"] is None  # the server cannot time a round trip


def test_rr_duration_mode(servers: Any) -> None:
    server = servers("rr-server")
    client = _client_ok(
        "rr-client", "--peer", LOOPBACK, "--port", str(server.port), "--duration", "0.3"
    )
    served = server.result()
    assert client["transactions"] == served["transactions"] > 0
    assert 0.3 <= client["seconds"] < 5
    assert client["latency_us"]["p50"] <= client["latency_us"]["p99"]


# ---- failures -----------------------------------------------------------------------------


def _bound_but_not_listening() -> socket.socket:
    """A port that is guaranteed to refuse connections for as long as we hold it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    return sock


@pytest.mark.parametrize("role", ["source", "rr-client"])
def test_connection_refused_reports_error_json_quickly(role: str) -> None:
    with _bound_but_not_listening() as blocker:
        port = blocker.getsockname()[1]
        started = time.monotonic()
        proc = _run(role, "--peer", LOOPBACK, "--port", str(port), "--connect-timeout", "0.3")
        elapsed = time.monotonic() - started
    assert proc.returncode == 1
    record = _single_json(proc.stdout)
    assert "refused" in record["error"].lower()
    assert record["role"] == role and record["port"] == port
    assert "Traceback" not in proc.stderr
    assert elapsed < 5


def test_stalled_peer_hits_idle_timeout() -> None:
    # The kernel completes the handshake from the backlog, but nobody ever answers.
    with socket.create_server((LOOPBACK, 0)) as mute:
        port = mute.getsockname()[1]
        started = time.monotonic()
        proc = _run(
            "rr-client", "--peer", LOOPBACK, "--port", str(port), "--count", "1", "--timeout", "0.5"
        )
        elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert "idle" in _single_json(proc.stdout)["error"]
    assert "Traceback" not in proc.stderr
    assert elapsed < 5


def test_server_without_client_times_out() -> None:
    proc = _run("sink", "--bind", LOOPBACK, "--port", "0", "--timeout", "0.3")
    assert proc.returncode == 1
    assert "no connection" in _single_json(proc.stdout)["error"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["source"],  # --peer is required
        ["source", "--peer", LOOPBACK, "--bytes", "10", "--duration", "1"],
        ["source", "--peer", LOOPBACK, "--msg-size", "0"],
        ["source", "--peer", LOOPBACK, "--duration", "-1"],
        ["sink", "--path", "nonexistent"],
        ["sink", "--port", "70000"],
        ["rr-client", "--peer", LOOPBACK, "--count", "0"],
        ["rr-server", "--seed", "3"],  # option of another subcommand
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""


# ---- pure helpers -------------------------------------------------------------------------


def test_percentile_linear_interpolation() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_latency_summary_converts_ns_to_us() -> None:
    summary = latency_summary_us([4000, 1000, 3000, 2000])
    assert summary == pytest.approx(
        {"p50": 2.5, "p90": 3.7, "p99": 3.97, "min": 1.0, "max": 4.0, "mean": 2.5}
    )
    assert latency_summary_us([])["p50"] is None


def test_pattern_wraps_around_block() -> None:
    block = random.Random(9).randbytes(13)
    stream = block * 4
    pattern = Pattern(seed=9, max_window=20, block_len=13)
    for offset in (0, 5, 12, 13, 25, 26 + 7):
        for size in (0, 1, 8, 13, 20):
            got = pattern.window(offset, size)
            assert bytes(got) == stream[offset % 13 : offset % 13 + size], (offset, size)
            assert isinstance(got, memoryview)
    with pytest.raises(ValueError):
        pattern.window(0, 21)


def test_pattern_default_block_is_seeded_randbytes() -> None:
    pattern = Pattern(seed=3, max_window=10)
    block = random.Random(3).randbytes(BLOCK_LEN)
    assert bytes(pattern.window(0, 10)) == block[:10]
    assert bytes(pattern.window(BLOCK_LEN - 4, 10)) == block[-4:] + block[:6]
    assert bytes(pattern.window(3 * BLOCK_LEN + 1, 5)) == block[1:6]


def test_parse_proc_stat() -> None:
    text = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 50 2 25 400 20 1 1 0 3 0\nintr 1 2 3\n"
    # total = 100+5+50+800+40+3+2+0 = 1000 (guest excluded); busy = 1000-800-40
    assert parse_proc_stat(text) == (160, 1000)
    assert parse_proc_stat("intr 1 2\n") is None
    assert parse_proc_stat("cpu  a b c d e\n") is None


@pytest.mark.parametrize(
    ("extra", "launcher_args"),
    [
        ([], ["--link", "uring"]),
        (["--stack-link", "copy"], ["--link", "copy"]),
        (["--no-confine-stack"], ["--link", "uring", "--no-confine"]),
    ],
)
def test_factored_stack_options_reach_the_launcher(
    extra: list[str], launcher_args: list[str]
) -> None:
    from guest.traffic.cli import parse_args
    from guest.traffic.userstack import FactoredProvider

    args = parse_args(
        ["rr-client", "--path", "factored", "--iface", "eth1", "--peer", "198.18.1.2", *extra]
    )
    assert FactoredProvider.extra_stack_args(FactoredProvider.__new__(FactoredProvider), args) == (
        launcher_args
    )


@pytest.mark.parametrize("path", ["mono", "factored"])
def test_a_gateway_reaches_the_stack_started_for_the_run(path: str) -> None:
    """A peer beyond the NIC's subnet is reached through --stack-gateway, which the stack
    started for the run gets as its --gateway (and only when given)."""
    from guest.traffic.cli import parse_args
    from guest.traffic.userstack import FactoredProvider, MonoProvider

    cls = {"mono": MonoProvider, "factored": FactoredProvider}[path]
    common = ["source", "--path", path, "--iface", "eth1", "--addr", "198.18.1.1/24"]
    common += ["--peer", "198.18.2.2"]
    provider = cls.__new__(cls)
    provider.iface, provider.path = "eth1", "/run/stackbed/stack-eth1.sock"
    cmd = provider.stack_command(parse_args([*common, "--stack-gateway", "198.18.1.2"]))
    assert cmd[cmd.index("--gateway") + 1] == "198.18.1.2"
    assert cmd[cmd.index("-m") + 1] == cls.stack_module
    assert "--gateway" not in provider.stack_command(parse_args(common))


def test_the_kernel_path_reports_its_connections_retransmissions() -> None:
    """TCP_INFO read with our layout: the state is ESTABLISHED (1), the MSS plausible, and a
    loopback connection retransmits nothing."""
    import socket
    import struct

    from guest.traffic import providers

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        stream = providers.KernelStream(client, timeout=5, nodelay=False)
        try:
            stream.sendall(b"x" * 100_000)
            got = 0
            while got < 100_000:
                got += len(peer.recv(65536))
            info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, providers._TCP_INFO_LEN)
            fields = struct.unpack_from(providers._TCP_INFO_FORMAT, info)
            assert fields[0] == 1 and 500 < fields[8 + 2] <= 65536  # state, snd_mss
            assert stream.tcp_counters()["retransmits"] == 0
        finally:
            stream.close()
            peer.close()

"""Interoperability of our user-level stack with Linux TCP, on a veth pair.

Our stack runs in one namespace on a NIC it takes from the kernel, started by the traffic tool
for the run: as one process (`--path mono`) or split into confined driver and protocol domains
(`--path factored`); Linux's own stack runs in the other namespace. Both directions, byte-exact
(sha256 at both ends), then request/response.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from guest.stack.factored import uring
from guest.testing.netns import unavailable_reason, veth_pair
from host.paths import PROJECT_ROOT

pytestmark = pytest.mark.netns
OURS, LINUX = "198.18.77.1", "198.18.77.2"
NBYTES = 4 * 1_000_003 + 777
APP_UID = 64903


@pytest.fixture(params=["mono", "factored-uring", "factored-shared", "factored-copy"])
def path(request) -> str:
    """The stack under test: monolithic, or factored with each driver<->protocol boundary
    (`--stack-link`): the kernel's rings shared with the protocol domain, which transmits
    through a send-only io_uring or by ringing the driver, or frames copied between them."""
    return request.param


@pytest.fixture(params=["offloads", "plain"])
def link(request, path):
    """A veth pair, Linux on side B. "offloads": every lever on at both ends, so Linux hands
    over GSO super-frames with partial checksums, which our stack takes through the
    virtio_net_hdr (NEEDS_CSUM). "plain": no lever, Linux's offloads off, MTU-sized frames
    with full checksums."""
    if (why := unavailable_reason()) is not None:
        pytest.skip(why)
    if path == "factored-uring" and (why := uring.supported()) is not None:
        pytest.skip(why)
    with veth_pair() as veth:
        offload = "all" if request.param == "offloads" else "none"
        pair = SimpleNamespace(**dataclasses.asdict(veth), offload=offload, path=path)
        ns = ["ip", "-n", pair.ns_b]
        subprocess.run([*ns, "addr", "add", f"{LINUX}/24", "dev", pair.if_b], check=True)
        if request.param == "offloads":
            yield pair
            return
        # Linux on veth hands frames over with checksums left to "hardware" (CHECKSUM_PARTIAL)
        # and segments left to GSO; a real NIC (the guests' e1000) finishes both on the wire.
        # Without the virtio_net_hdr our stack cannot tell, so Linux must finish them itself.
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pair.ns_b,
                "ethtool",
                "-K",
                pair.if_b,
                "tx",
                "off",
                "tso",
                "off",
                "gso",
                "off",
                "gro",
                "off",
            ],
            check=True,
            capture_output=True,
        )
        yield pair


def _traffic(ns: str, role: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "guest.traffic", role, *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}: {out[-800:]} {err[-1500:]}"
    return json.loads(out.strip().splitlines()[-1])


def _ours(pair) -> list[str]:
    path, _, link = pair.path.partition("-")
    return [
        "--path",
        path,
        *(["--stack-link", link] if link else []),
        "--iface",
        pair.if_a,
        "--addr",
        f"{OURS}/24",
        "--stack-socket",
        f"/run/stackbed/test-{pair.if_a}.sock",
        "--stack-offload",
        pair.offload,
    ]


def _check_app_domain(result: dict) -> None:
    """On the factored path the workload ran as its own confined application domain."""
    if result["path"] != "factored":
        assert "app_domain" not in result
        return
    domain = result["app_domain"]
    assert domain["confined"] and domain["policy"] == "app", domain
    assert domain["uid"] == APP_UID and domain["seccomp_mode"] == 2, domain


def test_our_client_to_linux_server(link):
    sink = _traffic(link.ns_b, "sink", "--port", "7001")
    time.sleep(0.5)
    src = _result(
        _traffic(
            link.ns_a,
            "source",
            *_ours(link),
            "--peer",
            LINUX,
            "--port",
            "7001",
            "--bytes",
            str(NBYTES),
            "--seed",
            "5",
        )
    )
    got = _result(sink)
    assert link.path.startswith(src["path"]) and got["path"] == "kernel"
    assert src["bytes"] == got["bytes"] == NBYTES
    assert src["sha256"] == got["sha256"]
    _check_app_domain(src)


def test_linux_client_to_our_server(link):
    sink = _traffic(link.ns_a, "sink", *_ours(link), "--port", "7002")
    src = _result(
        _traffic(
            link.ns_b,
            "source",
            "--peer",
            OURS,
            "--port",
            "7002",
            "--bytes",
            str(NBYTES),
            "--seed",
            "6",
            "--connect-timeout",
            "30",
        )
    )
    got = _result(sink)
    assert link.path.startswith(got["path"]) and src["path"] == "kernel"
    assert src["bytes"] == got["bytes"] == NBYTES
    assert src["sha256"] == got["sha256"]
    _check_app_domain(got)


def test_request_response_both_ways(link):
    server = _traffic(
        link.ns_b, "rr-server", "--port", "7003", "--req-size", "200", "--resp-size", "3000"
    )
    time.sleep(0.5)
    client = _result(
        _traffic(
            link.ns_a,
            "rr-client",
            *_ours(link),
            "--peer",
            LINUX,
            "--port",
            "7003",
            "--count",
            "500",
            "--req-size",
            "200",
            "--resp-size",
            "3000",
        )
    )
    served = _result(server)
    assert client["transactions"] == served["transactions"] == 500
    assert 0 < client["latency_us"]["p50"] <= client["latency_us"]["p99"]


@pytest.mark.parametrize("path", ["mono", "factored-uring"], indirect=True)
@pytest.mark.parametrize("link", ["plain"], indirect=True)
def test_a_failed_run_reports_its_stack_counters(link):
    """Nobody listens on Linux's side: the connect is refused, and the error line carries the
    counters of the stack the run started, showing the reset that refused it. A failure seen
    once in many runs is then explained by the record it leaves, not only by its message."""
    proc = _traffic(
        link.ns_a,
        "source",
        *_ours(link),
        "--peer",
        LINUX,
        "--port",
        "7009",
        "--bytes",
        "1000",
        "--connect-timeout",
        "5",
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    record = json.loads(out.strip().splitlines()[-1])
    assert "refused" in record["error"].lower(), record
    counters = record["stack"]["stack"]
    assert counters["tcp_connections_opened"] >= 1, counters  # the tool retries until its timeout
    assert counters["tcp.segments_in"] >= 1, counters  # Linux's RST

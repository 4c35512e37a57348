"""The factored stack's protection domains hold: attacks from inside the protocol domain are
denied and contained, and a protocol domain that dies is detected and reported.

The stack runs on a veth pair with Linux on the other side. The test opens a live session
(a TCP connection through the stack to a Linux sink), then makes the protocol domain attack
(`--attackable`, SIGUSR1: see `guest.stack.factored.attacks`) and requires every attack to be
denied *and* the same connection to carry its data byte-exact afterwards. A control run without
confinement shows the attacks are real: there they get through.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest.stack.factored import sandbox, uring
from guest.stack.factored.boundaries import BOUNDARIES
from guest.stack.session.client import StackClient
from guest.testing.netns import VethPair
from tests.netns.fixtures import netns_pair, next_event, start

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

OURS, LINUX = "198.18.79.1", "198.18.79.2"
NBYTES = 2_000_003


@pytest.fixture
def pair() -> Iterator[VethPair]:
    if (why := sandbox.supported()) is not None:
        pytest.skip(why)
    for p in netns_pair(tools=("ethtool",)):
        subprocess.run(
            ["ip", "-n", p.ns_b, "addr", "add", f"{LINUX}/24", "dev", p.if_b], check=True
        )
        yield p


class Stack:
    """The factored stack on side A, started with `--attackable`, always torn down."""

    def __init__(self, pair: VethPair, sock: str, *extra: str) -> None:
        self.proc = start(
            pair.ns_a,
            "guest.stack.factored",
            "--iface",
            pair.if_a,
            "--addr",
            f"{OURS}/24",
            "--socket",
            sock,
            "--attackable",
            *extra,
        )
        self.ready = next_event(self.proc, "ready")
        self.pids = {role: d["pid"] for role, d in self.ready["domains"].items()}

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def _sink(pair: VethPair, port: int) -> subprocess.Popen[str]:
    sink = start(pair.ns_b, "guest.traffic", "sink", "--port", str(port))
    time.sleep(0.5)
    return sink


def _attack(stack: Stack) -> dict[str, str]:
    os.kill(stack.pids["protocol"], signal.SIGUSR1)
    return next_event(stack.proc, "attacks")["results"]


#: How many attacks each driver<->protocol boundary (`--link`) has: kernel rings shared with
#: the protocol domain (with a send-only io_uring, which adds two attacks on the ring), or
#: frames copied through the link's rings (which adds an attack on the driver's). Every
#: boundary of the registry is here (`test_every_boundary_is_attacked`).
ATTACKS_BY_LINK = {"shared": 10, "uring": 12, "copy": 11}
#: The same, as test parameters: `uring` needs a kernel that gives this process io_uring.
LINK_PARAMS = [
    pytest.param(
        link,
        marks=pytest.mark.skipif(
            link == "uring" and uring.supported() is not None, reason=str(uring.supported())
        ),
    )
    for link in ATTACKS_BY_LINK
]


def test_every_boundary_is_attacked() -> None:
    assert set(ATTACKS_BY_LINK) == set(BOUNDARIES)


@pytest.mark.parametrize("link", LINK_PARAMS)
def test_attacks_from_the_protocol_domain_are_denied_and_contained(
    pair: VethPair, tmp_path: Path, link: str
) -> None:
    sock = str(tmp_path / "stack.sock")
    stack = Stack(pair, sock, "--link", link)
    sink = _sink(pair, 7201)
    try:
        assert all(d["confined"] for d in stack.ready["domains"].values()), stack.ready
        client = StackClient(sock)
        conn = client.connect((LINUX, 7201), timeout=10)
        payload = os.urandom(NBYTES)
        conn.sendall(payload[: NBYTES // 2])  # a live session with data in flight

        results = _attack(stack)
        print("attacks", json.dumps(results, indent=1))
        assert len(results) == ATTACKS_BY_LINK[link], results
        through = {name: r for name, r in results.items() if not r.startswith("denied")}
        assert not through, through

        # Contained: the same connection still carries everything, byte-exact.
        conn.sendall(payload[NBYTES // 2 :])
        conn.shutdown_write()
        out, err = sink.communicate(timeout=60)
        got = json.loads(out.strip().splitlines()[-1])
        assert got["bytes"] == NBYTES, (got, err[-1000:])
        assert got["sha256"] == hashlib.sha256(payload).hexdigest()
        conn.close()
        client.close()
        assert stack.proc.poll() is None, "a domain died during the attacks"
    finally:
        sink.kill()
        stack.close()


@pytest.mark.parametrize("link", LINK_PARAMS)
def test_without_confinement_the_same_attacks_get_through(
    pair: VethPair, tmp_path: Path, link: str
) -> None:
    """The control: the attacks are real, the sandbox is what stops them."""
    sock = str(tmp_path / "stack.sock")
    stack = Stack(pair, sock, "--no-confine", "--link", link)
    sink = _sink(pair, 7202)
    try:
        client = StackClient(sock)
        conn = client.connect((LINUX, 7202), timeout=10)
        conn.sendall(b"x" * 1000)
        results = _attack(stack)
        print("attacks", json.dumps(results, indent=1))
        expected = {
            "open_socket",
            "open_packet_socket",
            "open_file",
            "open_driver_memory",
            "ptrace_driver",
            "kill_driver",
            "spawn_process",
            "write_session_rings",
            "create_uring",
        }
        if link == "uring":
            expected.add("map_uring_entries")
        through = {name for name, r in results.items() if r.startswith("SUCCEEDED")}
        assert expected <= through, results
        assert len(results) == ATTACKS_BY_LINK[link], results
        if link == "copy":
            # Even unconfined, the driver's ring cannot be made writable: it is mapped from a
            # read-only fd (the link's design, beside the sandbox).
            assert results["write_driver_ring"].startswith("denied"), results
        if link == "uring":
            # Even unconfined, the ring refuses every register operation: its restrictions
            # are the kernel's (the second line of defence, beside the sandbox).
            assert results["register_on_uring"].startswith("denied"), results
        client.close()
    finally:
        sink.kill()
        stack.close()


def test_a_crashed_protocol_domain_is_detected_and_reported(pair: VethPair, tmp_path: Path) -> None:
    sock = str(tmp_path / "stack.sock")
    stack = Stack(pair, sock)
    sink = _sink(pair, 7203)
    try:
        client = StackClient(sock)
        conn = client.connect((LINUX, 7203), timeout=10)
        conn.sendall(b"y" * 10_000)
        os.kill(stack.pids["protocol"], signal.SIGKILL)

        died = next_event(stack.proc, "domain-died")
        assert died["domain"] == "protocol" and "SIGKILL" in died["how"], died
        stack.proc.wait(timeout=30)
        assert stack.proc.returncode == 3
        # The application learns it: its session is gone.
        with pytest.raises(OSError):
            for _ in range(100):
                conn.sendall(b"z" * 65536)
        client.close()
        # Nothing is left: no domain, no socket file, the NIC back with the kernel.
        for pid in stack.pids.values():
            assert not Path(f"/proc/{pid}").exists() or _zombie_free(pid), pid
        assert not Path(sock).exists()
        features = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pair.ns_a,
                "sysctl",
                "-n",
                f"net.ipv4.conf.{pair.if_a}.arp_ignore",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert features != "8", "the NIC was not given back to the kernel"
    finally:
        sink.kill()
        stack.close()


def _zombie_free(pid: int) -> bool:
    """True if `pid` is gone, or is some unrelated process that reused the number."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "python" not in status.split("\n", 1)[0]


@pytest.mark.parametrize("confine", [True, False], ids=["confined", "unconfined"])
def test_a_launcher_killed_outright_takes_its_domains_with_it(
    pair: VethPair, tmp_path: Path, confine: bool
) -> None:
    """SIGKILL of the launcher (a caller's timeout does that) runs none of its stopping code:
    its domains must still end, or an orphaned protocol domain would keep answering on the
    NIC (with a reset, for a port the next stack listens on)."""
    stack = Stack(pair, str(tmp_path / "stack.sock"), *([] if confine else ["--no-confine"]))
    try:
        stack.proc.kill()
        stack.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(map(_zombie_free, stack.pids.values())):
            time.sleep(0.1)
        left = [pid for pid in stack.pids.values() if not _zombie_free(pid)]
        assert not left, f"domains still running after their launcher died: {left}"
    finally:
        for pid in stack.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stack.close()

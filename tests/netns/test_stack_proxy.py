"""The proxy on our own stack (`guest.tools.stack_proxy`, mono and factored) between two ends.

A chain A —veth— M —veth— B, IP forwarding off in M, and M's two interfaces taken by our
stacks (one each, "plain": no offload levers, and Linux's offloads off at both ends so that
frames on the wire are complete, as in test_user_interop). The ends run Linux's stack (the
traffic tool's kernel path) and reach each other only through the proxy in M. Through each
path: a 4 MB stream A -> B byte-exact (sha256 at both ends), then request/response; the
proxy's counters must add up to what the ends moved. With the factored proxy, its relay domain
is killed while a connection is open: that connection must fail at both ends, in bounded time,
and a new connection through the same stacks must then work. A control shows that without the
proxy A cannot reach B.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from guest.testing.netns import leftovers, unavailable_reason
from guest.testing.netns_chain import VethChain, offloads_off, veth_chain
from tests.netns.fixtures import Processes, final_record, wait_event
from tests.netns.test_proxy import _intact

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

A_IP, M_A_IP = "198.18.82.1", "198.18.82.2"
B_IP, M_B_IP = "198.18.83.1", "198.18.83.2"
PORT, SERVER_PORT = 7300, 7301
NBYTES = 4 * 1_000_003 + 777
APP_UID = 64903
RR = ("--req-size", "200", "--resp-size", "3000")


@pytest.fixture
def chain() -> Iterator[VethChain]:
    if (why := unavailable_reason()) is not None:
        pytest.skip(why)
    with veth_chain() as c:  # M's offloads off: our stacks read and write wire frames there
        for ns, iface in ((c.ns_a, c.if_a), (c.ns_b, c.if_b)):
            offloads_off(ns, iface)  # Linux must finish checksums and segments itself
        for ns, iface, cidr, gateway in (
            (c.ns_a, c.if_a, f"{A_IP}/24", M_A_IP),
            (c.ns_b, c.if_b, f"{B_IP}/24", M_B_IP),
        ):
            subprocess.run(["ip", "-n", ns, "addr", "add", cidr, "dev", iface], check=True)
            subprocess.run(["ip", "-n", ns, "route", "add", "default", "via", gateway], check=True)
        argv = ["ip", "netns", "exec", c.ns_m, "sysctl", "-qw", "net.ipv4.ip_forward=0"]
        subprocess.run(argv, check=True)
        yield c
    assert not {c.ns_a, c.ns_m, c.ns_b} & set(leftovers())


def _stack_proxy(procs: Processes, chain: VethChain, path: str) -> tuple[Any, dict[str, Any]]:
    """The proxy in M, listening once this returns; (process, its ready record)."""
    proc = procs.start(
        chain.ns_m, "guest.tools.stack_proxy", "--path", path,
        "--listen-iface", chain.if_ma, "--listen-addr", f"{M_A_IP}/24", "--port", str(PORT),
        "--to-iface", chain.if_mb, "--to-addr", f"{M_B_IP}/24", "--to", f"{B_IP}:{SERVER_PORT}",
        "--offload", "none",
    )  # fmt: skip
    ready = wait_event(proc, "ready", timeout=60)
    assert ready["path"] == path and ready["listen"] == f"{M_A_IP}:{PORT}", ready
    assert ready["stacks"]["listen"]["iface"] == chain.if_ma, ready
    assert ready["stacks"]["to"]["iface"] == chain.if_mb, ready
    return proc, ready


def _stopped(proxy: subprocess.Popen[str]) -> dict[str, Any]:
    proxy.terminate()
    final = final_record(proxy, timeout=90)
    assert final["event"] == "stopped", final
    return final["stats"]


def _traffic(procs: Processes, ns: str, role: str, *args: str) -> subprocess.Popen[str]:
    proc = procs.start(ns, "guest.traffic", role, *args)
    if role in ("sink", "rr-server"):
        wait_event(proc, "listening", stderr=True)
    return proc


def _stream(procs: Processes, chain: VethChain, nbytes: int, seed: int) -> int:
    """A stream A -> B through the proxy, byte-exact; its length."""
    sink = _traffic(procs, chain.ns_b, "sink", "--port", str(SERVER_PORT))
    source = _traffic(
        procs, chain.ns_a, "source", "--peer", M_A_IP, "--port", str(PORT),
        "--bytes", str(nbytes), "--seed", str(seed),
    )  # fmt: skip
    return _intact(final_record(source, timeout=120), final_record(sink, timeout=120))


@pytest.mark.parametrize("path", ["mono", "factored"])
def test_stream_and_rr_through_the_stack_proxy(chain: VethChain, path: str) -> None:
    with Processes() as procs:
        proxy, ready = _stack_proxy(procs, chain, path)
        assert _stream(procs, chain, NBYTES, seed=21) == NBYTES
        server = _traffic(procs, chain.ns_b, "rr-server", "--port", str(SERVER_PORT), *RR)
        client = _traffic(
            procs, chain.ns_a, "rr-client", "--peer", M_A_IP, "--port", str(PORT),
            "--count", "300", *RR,
        )  # fmt: skip
        done, served = final_record(client), final_record(server)
        assert done["transactions"] == served["transactions"] == 300
        stats = _stopped(proxy)
    c = stats["connections"]
    assert c["accepted"] == c["completed"] == 2 and c["failed"] == c["aborted"] == 0, c
    up, down = stats["client_to_server"], stats["server_to_client"]
    assert up["bytes"] == up["user_copy_bytes"] == NBYTES + 300 * 200, up
    assert down["bytes"] == down["user_copy_bytes"] == 300 * 3000, down
    assert up["half_closes"] == down["half_closes"] == 2, (up, down)
    for side in ("listen", "to"):
        counters = stats["stacks"][side]
        assert counters and "close_error" not in counters, (side, counters)
    assert stats["relay_domains"] == {"started": 1, "died": 0}, stats
    domain = stats["relay"]["domain"]
    if path == "factored":
        assert ready["relay"]["domain"] == "app" and ready["relay"]["pid"] != ready["pid"]
        assert domain["confined"] and domain["policy"] == "app", domain
        assert domain["uid"] == APP_UID and domain["seccomp_mode"] == 2, domain
    else:
        assert ready["relay"]["domain"] == "in-process" and not domain["confined"], domain


def _stderr_events(proc: subprocess.Popen[str], *events: str, timeout: float) -> list[dict]:
    """The JSON lines of `events` the proxy prints on stderr, waiting for them all (read from
    the fd itself: a buffered readline could keep the next line from select)."""
    assert proc.stderr is not None
    fd, text, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        text += chunk
        lines = [json.loads(x) for x in text.decode().splitlines() if x.startswith("{")]
        found = {line.get("event"): line for line in lines}
        if set(events) <= set(found):
            return [found[event] for event in events]
    raise AssertionError(f"not all of {events} from the proxy within {timeout} s: {text!r}")


def test_a_killed_relay_domain_fails_its_connection_and_is_restarted(chain: VethChain) -> None:
    """SIGKILL to the factored proxy's relay domain while a request/response connection is
    open: both ends see an error within their idle timeout (the stacks abort the dead
    domain's sessions: resets, not a hang), the supervisor starts a new domain, and a stream
    through the same stacks is then byte-exact."""
    with Processes() as procs:
        proxy, ready = _stack_proxy(procs, chain, "factored")
        server = _traffic(
            procs, chain.ns_b, "rr-server", "--port", str(SERVER_PORT), "--timeout", "5", *RR
        )
        client = _traffic(
            procs, chain.ns_a, "rr-client", "--peer", M_A_IP, "--port", str(PORT),
            "--duration", "60", "--timeout", "5", *RR,
        )  # fmt: skip
        time.sleep(2.0)
        assert client.poll() is None and server.poll() is None  # transacting
        os.kill(ready["relay"]["pid"], signal.SIGKILL)
        killed = time.monotonic()
        for end in (client, server):
            out, _ = end.communicate(timeout=20)
            assert end.returncode != 0, out
            assert "error" in json.loads(out.splitlines()[-1]), out
        assert time.monotonic() - killed < 15
        died, restarted = _stderr_events(proxy, "relay_died", "relay_restarted", timeout=10)
        assert died["pid"] == ready["relay"]["pid"] != restarted["pid"], (died, restarted)
        assert _stream(procs, chain, 1_000_000, seed=22) == 1_000_000
        stats = _stopped(proxy)
    assert stats["relay_domains"] == {"started": 2, "died": 1}, stats
    c = stats["connections"]  # the second domain's: the first one's died with it
    assert c["accepted"] == c["completed"] == 1 and c["failed"] == 0, c
    assert stats["client_to_server"]["bytes"] == 1_000_000, stats


def test_control_without_the_proxy_a_cannot_reach_b(chain: VethChain) -> None:
    """No proxy: A's connect to B fails. With the proxy's stacks on M's interfaces, a connect
    to B itself still fails (the stacks do not forward), while through the proxy it works: the
    tests above show the proxy at work, not some forwarding."""
    quick = ("--connect-timeout", "1", "--timeout", "2")
    direct = ("--peer", B_IP, "--port", str(SERVER_PORT), "--bytes", "100000", *quick)
    with Processes() as procs:
        sink = _traffic(procs, chain.ns_b, "sink", "--port", str(SERVER_PORT))
        for proxied in (False, True):
            if proxied:
                proxy, _ = _stack_proxy(procs, chain, "mono")
            source = _traffic(procs, chain.ns_a, "source", *direct)
            out, _ = source.communicate(timeout=30)
            assert source.returncode != 0, out
            assert "error" in json.loads(out.splitlines()[-1]), out
        source = _traffic(
            procs, chain.ns_a, "source", "--peer", M_A_IP, "--port", str(PORT),
            "--bytes", "100000", *quick,
        )  # fmt: skip
        assert _intact(final_record(source), final_record(sink)) == 100000
        assert _stopped(proxy)["connections"]["completed"] == 1

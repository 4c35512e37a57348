"""The traffic tool's `floor` path (raw frames through a PACKET_MMAP ring, the yardstick row):
its stream arrives byte-exact on a veth and through a lossy, reordering, duplicating link (so
its go-back-N really repairs), request/response works, and a client with no server is told so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from guest.testing.netns import VethPair
from guest.testing.netns_chain import VethChain
from tests.netns.fixtures import Processes, final_record, netns_chain, netns_pair, wait_event

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

NBYTES = 1_500_007
PEER = "198.18.77.2"  # only named in messages: the floor speaks no IP


@pytest.fixture
def pair() -> Iterator[VethPair]:
    yield from netns_pair()


@pytest.fixture
def chain() -> Iterator[VethChain]:
    yield from netns_chain(tools=("ethtool",))


def _stream(procs: Processes, ns_a: str, if_a: str, ns_b: str, if_b: str, port: str) -> tuple:
    sink = procs.start(ns_b, "guest.traffic", "sink", "--path", "floor", "--iface", if_b,
                       "--port", port)  # fmt: skip
    wait_event(sink, "listening", stderr=True)
    source = procs.start(ns_a, "guest.traffic", "source", "--path", "floor", "--iface", if_a,
                         "--peer", PEER, "--port", port, "--bytes", str(NBYTES))  # fmt: skip
    return final_record(source, timeout=90), final_record(sink, timeout=90)


def _intact(sent: dict, got: dict) -> None:
    assert sent.get("error") is None and got.get("error") is None, (sent, got)
    assert sent["bytes"] == got["bytes"] == NBYTES
    assert sent["sha256"] == got["sha256"]


def test_stream_and_request_response_on_a_veth(pair: VethPair) -> None:
    with Processes() as procs:
        sent, got = _stream(procs, pair.ns_a, pair.if_a, pair.ns_b, pair.if_b, "7401")
        _intact(sent, got)
        assert sent["stack"]["floor"]["frames_out"] >= NBYTES // 1448
        server = procs.start(pair.ns_b, "guest.traffic", "rr-server", "--path", "floor",
                             "--iface", pair.if_b, "--port", "7402")  # fmt: skip
        wait_event(server, "listening", stderr=True)
        client = procs.start(pair.ns_a, "guest.traffic", "rr-client", "--path", "floor",
                             "--iface", pair.if_a, "--peer", PEER, "--port", "7402",
                             "--count", "500")  # fmt: skip
        rr = final_record(client, timeout=60)
        assert rr.get("error") is None, rr
        assert rr["transactions"] == 500
        assert 0 < rr["latency_us"]["p50"] <= rr["latency_us"]["p99"]
        assert final_record(server, timeout=30)["transactions"] == 500


def test_a_lossy_link_is_repaired(chain: VethChain) -> None:
    """Through the impairment relay: frames lost, duplicated and reordered both ways (ACKs
    too); the stream still arrives whole, and the sender had to resend."""
    with Processes(cpu=0) as procs:
        relay = procs.start(chain.ns_m, "guest.tools.relay", "--a", chain.if_ma, "--b",
                            chain.if_mb, "--loss", "2%", "--duplicate", "1%", "--reorder", "5%",
                            "--delay-ms", "1", "--seed", "77")  # fmt: skip
        wait_event(relay, "ready")
        sent, got = _stream(procs, chain.ns_a, chain.if_a, chain.ns_b, chain.if_b, "7403")
        _intact(sent, got)
        assert sent["stack"]["floor"]["resent"] > 0


def test_a_client_with_no_server_is_refused(pair: VethPair) -> None:
    with Processes() as procs:
        client = procs.start(pair.ns_a, "guest.traffic", "rr-client", "--path", "floor",
                             "--iface", pair.if_a, "--peer", PEER, "--port", "7404",
                             "--count", "1", "--connect-timeout", "2")  # fmt: skip
        out, _ = client.communicate(timeout=30)
        rec = json.loads(out.strip().splitlines()[-1])
        assert client.returncode != 0
        assert "no server answered on port 7404" in rec["error"]
        assert "attempt(s)" in rec["error"] and "after 1 attempt" not in rec["error"]

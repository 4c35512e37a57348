"""The forwarding engine's fast path (its flow cache) against the full path, its specification.

Two engines, one with the fast path and one without, get the same frames at the same times: a
seeded mix of flows (resolved, behind a gateway, unresolved, unroutable), headers the fast path
must leave to the full path (options, fragments, TTL 1, too big, bad checksums), the engine's
fuzz mutations, ARP refreshes and expiries over 200 s, replies that extend an entry, spoofed
ones that must change nothing, and a route added mid-run that moves a cached flow. After every
frame both must have sent the same frames, byte for byte, and counted the same. A control shows
the comparison catches a cache that outlives its ARP entry.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from guest.stack.forward import Forwarder, Route
from guest.stack.forward.engine import MAX_FLOWS
from guest.stack.wire.addr import ipv4
from tests.unit.test_forward_engine import (
    A_IP,
    A_MAC,
    B_IP,
    B_MAC,
    EVIL_MAC,
    FAR_IP,
    FW1_MAC,
    GW_IP,
    GW_MAC,
    _mutate,
    _options_frame,
    ip_frame,
    is_arp_request_for,
    primed,
    reply_to_fw0,
    reply_to_fw1,
)

A2_IP = ipv4("198.18.1.9")  # a second sender on A's link
UNRESOLVED = ipv4("198.18.2.77")
NO_ROUTE = ipv4("203.0.113.9")


def _corpus() -> list[tuple[str, bytearray]]:
    """(ingress, frame) seeds: the common case many times over, and every way to differ."""
    plain = [
        ("eth0", ip_frame(A_IP, B_IP, payload=bytes(1200))),
        ("eth0", ip_frame(A2_IP, B_IP, payload=bytes(64))),
        ("eth0", ip_frame(A_IP, FAR_IP, payload=bytes(500))),
        ("eth1", ip_frame(B_IP, A_IP, eth_dst=FW1_MAC, eth_src=B_MAC)),
        ("eth0", ip_frame(A_IP, B_IP, payload=bytes(20), pad_to=60)),  # padded: trimmed
    ]
    odd = [
        ("eth0", ip_frame(A_IP, UNRESOLVED)),
        ("eth0", ip_frame(A_IP, NO_ROUTE)),
        ("eth0", ip_frame(A_IP, B_IP, ttl=1)),
        ("eth0", ip_frame(A_IP, B_IP, mf=True, payload=bytes(64))),
        ("eth0", ip_frame(A_IP, B_IP, payload=bytes(1400))),  # too big for eth1's 1000: cut
        ("eth0", ip_frame(A_IP, B_IP, payload=bytes(1400), df=True)),  # ... or refused
        ("eth0", _options_frame()),
        ("eth1", reply_to_fw1(EVIL_MAC, B_IP)),  # a spoof: ignored
    ]
    return plain * 6 + odd


#: Who answers an ARP request for an address, and how to build the answer.
ANSWERS = {
    A_IP: ("eth0", lambda: reply_to_fw0(A_MAC, A_IP)),
    B_IP: ("eth1", lambda: reply_to_fw1(B_MAC, B_IP)),
    GW_IP: ("eth1", lambda: reply_to_fw1(GW_MAC, GW_IP)),
}


def _answers(out: list, rng: random.Random) -> list[tuple[str, bytearray]]:
    """The neighbours' replies to the requests in `out`, each given half the time: answered
    refresh probes extend an entry, unanswered ones let it expire and be resolved again."""
    replies = []
    for _, frame in out:
        for ip, (iface, reply) in ANSWERS.items():
            if is_arp_request_for(frame, ip) and rng.random() < 0.5:
                replies.append((iface, reply()))
    return replies


def _differential(fast: Forwarder, full: Forwarder, seed: int, frames: int = 4000) -> None:
    rng = random.Random(seed)
    corpus = _corpus()
    replies: list[tuple[str, bytearray]] = []
    for i in range(frames):
        if replies:
            iface, frame = replies.pop(0)
        else:
            iface, frame = rng.choice(corpus)
            if rng.random() < 0.3:
                frame = _mutate(rng, frame)
        now = i * 0.05  # 200 s: ARP entries refresh (55 s) and expire (60 s) on the way
        if i == frames // 2:
            for engine in (fast, full):  # FAR's traffic now goes to B, not to the gateway
                engine.add_route(Route.from_text("10.9.1.0/24", via="198.18.2.2"))
        got = fast.handle(iface, bytearray(frame), now)
        want = full.handle(iface, bytearray(frame), now)
        assert [(n, bytes(f)) for n, f in got] == [(n, bytes(f)) for n, f in want], (i, now)
        assert fast.stats() == full.stats(), (i, now)
        replies += _answers(want, rng)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_path_sends_and_counts_what_the_full_path_does(seed: int) -> None:
    fast, full = primed(mtu1=1000), primed(mtu1=1000, fast_path=False)
    _differential(fast, full, seed)
    assert full.fast_hits == 0
    assert fast.fast_hits > 1000, fast.fast_hits  # it did take the common case
    s = full.stats()
    assert s["forwarded"] > 2000 and s["arp_requests_out"] > 3, s


def test_a_moved_route_is_followed_at_once() -> None:
    fast = primed()
    frame = ip_frame(A_IP, FAR_IP)
    for _ in range(3):
        [(_, sent)] = fast.handle("eth0", bytearray(frame), 1.0)
        assert sent[0:6] == GW_MAC
    assert fast.fast_hits == 2
    fast.add_route(Route.from_text("10.9.1.0/24", via="198.18.2.2"))
    [(_, sent)] = fast.handle("eth0", bytearray(frame), 1.0)
    assert sent[0:6] == B_MAC


def test_spoofed_sources_cannot_grow_the_cache_without_bound() -> None:
    fast = primed()
    for i in range(3 * MAX_FLOWS):
        src = ipv4("198.18.1.0") | (i & 0xFF) | (i >> 8) << 16  # on-link and beyond
        fast.handle("eth0", ip_frame(src, B_IP), 1.0)
    assert 0 < len(fast._ports["eth0"].flows) <= MAX_FLOWS


class _Stale(Forwarder):
    """A broken fast path: its cache entries never expire with their ARP entry."""

    def _remember(self, port, src, dst, egress, next_hop) -> None:  # type: ignore[override]
        known = egress.arp.quiet(next_hop)
        if known is not None:
            port.flows[src << 32 | dst] = (egress, known[0], float("inf"), egress.arp.generation)


def _primed_as(cls: type[Forwarder]) -> Callable[..., Forwarder]:
    def make(**kw) -> Forwarder:
        fw = primed(**kw)
        fw.__class__ = cls
        return fw

    return make


def test_control_a_cache_that_outlives_its_arp_entry_is_caught() -> None:
    fast, full = _primed_as(_Stale)(mtu1=1000), primed(mtu1=1000, fast_path=False)
    with pytest.raises(AssertionError):
        _differential(fast, full, 1)


def test_fast_path_off_never_caches() -> None:
    full = primed(fast_path=False)
    for _ in range(3):
        full.handle("eth0", ip_frame(), 1.0)
    assert full.fast_hits == 0 and not full._ports["eth0"].flows

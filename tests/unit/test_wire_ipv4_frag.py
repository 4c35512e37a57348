"""IPv4 reassembly: orderings, duplicates, overlaps, expiry with a fake clock, resource limits."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.wire.ipv4 import PROTO_UDP, Ipv4Repr
from guest.stack.wire.ipv4_frag import Ipv4Reassembler

PROPS = settings(max_examples=300, deadline=None)

SRC, DST = 0x0A000001, 0x0A000002


def fragment(
    offset: int, data: bytes, more: bool, ident: int = 7, src: int = SRC
) -> tuple[Ipv4Repr, bytes]:
    ip = Ipv4Repr(src, DST, PROTO_UDP, len(data), ident=ident, more_frags=more, frag_offset=offset)
    return ip, data


def split(payload: bytes, size: int, ident: int = 7) -> list[tuple[Ipv4Repr, bytes]]:
    """Fragment `payload` like a sender would: `size`-byte pieces (multiple of 8)."""
    pieces = []
    for offset in range(0, len(payload), size):
        chunk = payload[offset : offset + size]
        pieces.append(fragment(offset, chunk, offset + size < len(payload), ident))
    return pieces


def feed(r: Ipv4Reassembler, frags: list[tuple[Ipv4Repr, bytes]], now: float = 0.0) -> list:
    out = []
    for ip, data in frags:
        result = r.push(ip, data, now)
        if result is not None:
            out.append(result)
    return out


PAYLOAD = os.urandom(4000)


def test_not_a_fragment_passes_through_uncopied() -> None:
    r = Ipv4Reassembler()
    ip = Ipv4Repr(SRC, DST, PROTO_UDP, 5)
    payload = memoryview(b"hello")
    result = r.push(ip, payload, 0.0)
    assert result is not None and result.ip is ip and result.payload is payload
    assert r.stats.fragments == 0


def test_in_order() -> None:
    r = Ipv4Reassembler()
    frags = split(PAYLOAD, 1480)
    out = feed(r, frags)
    assert len(out) == 1
    ip, payload = out[0]
    assert payload == PAYLOAD
    assert ip.payload_len == len(PAYLOAD) and not ip.is_fragment and ip.ident == 7
    assert r.stats.reassembled == 1 and r.stats.fragments == 3 and r.stats.dropped == 0
    assert len(r) == 0 and r.buffered_bytes == 0


def test_out_of_order() -> None:
    r = Ipv4Reassembler()
    frags = split(PAYLOAD, 1480)
    out = feed(r, [frags[2], frags[0], frags[1]])
    assert [d.payload for d in out] == [PAYLOAD]


def test_header_comes_from_first_fragment() -> None:
    r = Ipv4Reassembler()
    frags = split(PAYLOAD, 1480)
    frags[0][0].ttl = 99
    out = feed(r, [frags[1], frags[2], frags[0]])
    assert out[0].ip.ttl == 99


def test_exact_duplicates_are_dropped_alone() -> None:
    r = Ipv4Reassembler()
    frags = split(PAYLOAD, 1480)
    out = feed(r, [frags[0], frags[0], frags[2], frags[2], frags[1]])
    assert [d.payload for d in out] == [PAYLOAD]
    assert r.stats.dropped_duplicate == 2


def test_partial_overlap_discards_the_datagram() -> None:
    r = Ipv4Reassembler()
    first = fragment(0, PAYLOAD[:1480], True)
    overlapping = fragment(1472, PAYLOAD[1472:2952], True)
    assert feed(r, [first, overlapping]) == []
    assert r.stats.dropped_overlap == 2
    assert len(r) == 0 and r.buffered_bytes == 0
    # The remaining honest fragments start a new, incomplete datagram.
    frags = split(PAYLOAD, 1480)
    assert feed(r, frags[1:]) == []
    assert len(r) == 1


def test_overlap_contained_in_an_existing_fragment() -> None:
    r = Ipv4Reassembler()
    assert feed(r, [fragment(0, PAYLOAD[:1480], True), fragment(8, PAYLOAD[8:16], True)]) == []
    assert r.stats.dropped_overlap == 2


def test_overlap_with_the_following_fragment() -> None:
    r = Ipv4Reassembler()
    feed(r, [fragment(1480, PAYLOAD[1480:2960], True), fragment(0, PAYLOAD[:1488], True)])
    assert r.stats.dropped_overlap == 2


def test_timeout_expiry_with_fake_clock() -> None:
    r = Ipv4Reassembler(timeout=30.0)
    frags = split(PAYLOAD, 1480)
    assert r.push(*frags[0], now=100.0) is None
    assert r.push(*frags[1], now=129.0) is None
    assert r.expire(129.9) == 0
    assert r.expire(130.0) == 1
    assert r.stats.timeouts == 1 and r.stats.dropped_timeout == 2
    assert len(r) == 0 and r.buffered_bytes == 0
    # The late last fragment opens a fresh datagram rather than completing the expired one.
    assert r.push(*frags[2], now=130.5) is None
    assert len(r) == 1


def test_push_expires_stale_datagrams() -> None:
    r = Ipv4Reassembler(timeout=30.0)
    r.push(*split(PAYLOAD, 1480, ident=1)[0], now=0.0)
    r.push(*split(PAYLOAD, 1480, ident=2)[0], now=10.0)
    r.push(*split(PAYLOAD, 1480, ident=3)[0], now=35.0)
    assert len(r) == 2 and r.stats.timeouts == 1


def test_memory_limit_evicts_oldest() -> None:
    r = Ipv4Reassembler(max_bytes=4000)
    a = split(PAYLOAD, 1480, ident=1)
    b = split(PAYLOAD, 1480, ident=2)
    feed(r, [a[0], a[1]])  # 2960 bytes held
    assert r.buffered_bytes == 2960
    feed(r, [b[0]])  # needs 1480 more: datagram 1 is evicted
    assert r.stats.dropped_memory == 2
    assert len(r) == 1 and r.buffered_bytes == 1480
    assert [d.payload for d in feed(r, b[1:])] == [PAYLOAD]


def test_datagram_that_cannot_fit_is_dropped() -> None:
    r = Ipv4Reassembler(max_bytes=2000)
    frags = split(PAYLOAD, 1480)
    assert feed(r, frags[:2]) == []
    assert r.stats.dropped_memory == 2  # the held fragment and the one that did not fit
    assert len(r) == 0 and r.buffered_bytes == 0
    # A later fragment of the same datagram starts over (and is held: it fits on its own).
    assert feed(r, frags[2:]) == []
    assert len(r) == 1 and r.buffered_bytes == len(frags[2][1])


def test_concurrent_datagram_limit_evicts_oldest() -> None:
    r = Ipv4Reassembler(max_datagrams=2)
    for ident in (1, 2, 3):
        r.push(*split(PAYLOAD, 1480, ident=ident)[0], now=0.0)
    assert len(r) == 2
    assert r.stats.dropped_too_many == 1
    out = feed(r, split(PAYLOAD, 1480, ident=3)[1:])
    assert [d.payload for d in out] == [PAYLOAD]


def test_keys_keep_datagrams_apart() -> None:
    r = Ipv4Reassembler()
    a = split(PAYLOAD, 1480, ident=1)
    b = [fragment(ip.frag_offset, data[::-1], ip.more_frags, 1, src=SRC + 1) for ip, data in a]
    out = feed(r, [a[0], b[0], b[1], a[1], b[2], a[2]])
    assert len(out) == 2 and out[0].payload != out[1].payload


def test_invalid_fragments() -> None:
    r = Ipv4Reassembler()
    # Non-final fragment whose length is not a multiple of 8.
    assert r.push(*fragment(0, b"x" * 13, True), now=0) is None
    # Beyond the 65535-byte datagram limit (ping of death).
    assert r.push(*fragment(65528, b"x" * 16, False), now=0) is None
    assert r.stats.dropped_invalid == 2
    # Conflicting ends: a second "last" fragment ending elsewhere discards the datagram.
    r.push(*fragment(16, b"x" * 8, False, ident=9), now=0)
    r.push(*fragment(16, b"x" * 16, False, ident=9), now=0)
    assert r.stats.dropped_invalid == 4
    # A "last" fragment ending before data already held.
    r.push(*fragment(16, b"x" * 16, True, ident=10), now=0)
    r.push(*fragment(8, b"x" * 8, False, ident=10), now=0)
    assert r.stats.dropped_invalid == 6
    # Data past the known end.
    r.push(*fragment(8, b"x" * 8, False, ident=11), now=0)
    r.push(*fragment(16, b"x" * 8, True, ident=11), now=0)
    assert r.stats.dropped_invalid == 8
    assert len(r) == 0 and r.buffered_bytes == 0 and r.stats.fragments == 3


def test_zero_length_last_fragment() -> None:
    r = Ipv4Reassembler()
    out = feed(r, [fragment(8, b"", False), fragment(0, b"abcdefgh", True)])
    assert [d.payload for d in out] == [b"abcdefgh"]


@PROPS
@given(
    st.binary(min_size=1, max_size=3000),
    st.integers(1, 200).map(lambda n: n * 8),
    st.randoms(use_true_random=False),
    st.integers(0, 3),
)
def test_any_arrival_order_with_duplicates(
    payload: bytes, size: int, rnd: random.Random, dups: int
) -> None:
    frags = split(payload, size)
    frags += [rnd.choice(frags) for _ in range(dups)]
    rnd.shuffle(frags)
    r = Ipv4Reassembler()
    out = feed(r, frags)
    # The first completion is the datagram. Duplicates arriving after it start a new one
    # (completed datagrams are not remembered), which may complete again, identically; an
    # unfragmented packet passes through each time it is offered.
    assert out and all(d.payload == payload for d in out)
    assert r.stats.dropped_overlap == 0 and r.stats.dropped_invalid == 0


@PROPS
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # ident
            st.integers(0, 0x1FFF),  # offset units
            st.integers(0, 3000),  # length
            st.booleans(),  # more fragments
            st.floats(0, 100),  # time step
        ),
        max_size=40,
    )
)
def test_arbitrary_fragments_respect_limits(ops: list[tuple[int, int, int, bool, float]]) -> None:
    r = Ipv4Reassembler(max_bytes=6000, max_datagrams=3, timeout=30)
    now = 0.0
    pushed = 0
    for ident, units, length, more, step in ops:
        now += step
        ip, data = fragment(units * 8, bytes(length), more, ident)
        pushed += ip.is_fragment
        result = r.push(ip, data, now=now)
        if result is not None:
            assert len(result.payload) == result.ip.payload_len
        assert r.buffered_bytes <= r.max_bytes
        assert len(r) <= r.max_datagrams
        # Every fragment offered was either accepted or dropped on arrival (accepted ones may
        # be dropped later too, so this is an inequality).
        assert r.stats.fragments + r.stats.dropped >= pushed

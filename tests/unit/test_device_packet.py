"""The plain packet socket, on a real veth pair between two network namespaces.

Frames cross in both directions between the plain socket and the rings, so each device is
checked against an independent implementation, not only against itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns.fixtures import (
    VethPair,
    leftovers,
    netns_pair,
    receiver,
    require_netns,
    result,
    send,
    veth_pair,
)

pytestmark = pytest.mark.netns

COUNT = 2000


@pytest.fixture
def pair() -> Iterator[VethPair]:
    yield from netns_pair()


def _transfer(pair: VethPair, sender: list[str], recv: list[str]) -> tuple[dict, dict]:
    counting = receiver(pair, *recv, "--count", str(COUNT))
    sent = send(pair, *sender, "--count", str(COUNT))
    return sent, result(counting)


def _assert_intact(sent: dict, got: dict) -> None:
    assert sent["frames"] == COUNT, sent
    assert got["frames"] == COUNT, got
    assert got["bytes"] == sent["bytes"]
    assert got["sha256"] == sent["sha256"]
    assert (got["gaps"], got["reordered"]) == (0, 0)
    assert got["stats"]["rx_dropped"] == 0 and got["stats"]["rx_truncated"] == 0


@pytest.mark.parametrize("version", ["2", "3"])
def test_plain_socket_to_ring(pair: VethPair, version: str) -> None:
    sent, got = _transfer(pair, ["--kind", "packet"], ["--kind", "ring", "--version", version])
    _assert_intact(sent, got)
    assert sent["stats"]["tx_batches"] == COUNT  # one syscall per frame


@pytest.mark.parametrize("version", ["2", "3"])
def test_ring_to_plain_socket(pair: VethPair, version: str) -> None:
    sent, got = _transfer(pair, ["--kind", "ring", "--version", version], ["--kind", "packet"])
    _assert_intact(sent, got)
    assert sent["stats"]["tx_batches"] < COUNT / 10  # many frames per syscall


def test_plain_to_plain_with_qdisc_bypass(pair: VethPair) -> None:
    sent, got = _transfer(pair, ["--kind", "packet", "--qdisc-bypass"], ["--kind", "packet"])
    _assert_intact(sent, got)
    assert got["stats"]["rx_frames"] == COUNT and got["stats"]["rx_batches"] >= 1


def test_minimum_size_frames(pair: VethPair) -> None:
    """60-byte frames (the Ethernet minimum without FCS) arrive as sent, unpadded or not."""
    sent, got = _transfer(pair, ["--kind", "packet", "--size", "60"], ["--kind", "packet"])
    _assert_intact(sent, got)


def test_veth_pair_leaves_nothing_behind() -> None:
    require_netns()
    with veth_pair() as p:
        assert {p.ns_a, p.ns_b} <= set(leftovers())
    assert not {p.ns_a, p.ns_b} & set(leftovers())
    with pytest.raises(RuntimeError), veth_pair() as p:
        raise RuntimeError("a failing test body")
    assert not {p.ns_a, p.ns_b} & set(leftovers())

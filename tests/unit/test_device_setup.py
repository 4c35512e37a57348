"""take_over()/restore() on a veth inside a throwaway namespace: what changes, what returns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from guest.stack.device.setup import FEATURES
from tests.netns.fixtures import VethPair, check, netns_pair, result

pytestmark = pytest.mark.netns


@pytest.fixture
def pair() -> Iterator[VethPair]:
    yield from netns_pair(tools=("ethtool", "sysctl"))


def test_take_over_and_restore(pair: VethPair) -> None:
    found = result(check(pair.ns_a, "take_over_roundtrip", iface=pair.if_a))
    before = found["before"]
    assert before["addrs"] and before["arp_ignore"] == "0" and before["disable_ipv6"] == "0"
    assert any("198.19.7.0/24 via 198.18.7.2" in r for r in before["routes"])
    for offloads in (False, True):
        taken = found[f"taken_{offloads}"]
        assert taken["addrs"] == [] and taken["routes"] == []
        assert taken["arp_ignore"] == "8" and taken["disable_ipv6"] == "1"
        assert found[f"restored_{offloads}"] == before
    off = found["taken_False"]["features"]
    # Every feature in setup.FEATURES off, but receive checksumming, which veth has on: it
    # stays on (setup.KEPT_ON), and nothing says it did not take.
    assert off == {name: short == "rx" for short, name in FEATURES.items()}, off
    assert found["unchanged_False"] == {}
    on = found["taken_True"]["features"]
    assert on == {name: short != "lro" for short, name in FEATURES.items()}, on


def test_receive_checksums_go_on_and_the_wait_for_the_reset_is_bounded(pair: VethPair) -> None:
    found = result(check(pair.ns_a, "receive_checksums", iface=pair.if_a))
    assert found["already_on"] == []
    assert found["error"] == f"{pair.if_a}: no carrier 0.3 s after rx checksumming"
    assert found["on_after"] is True

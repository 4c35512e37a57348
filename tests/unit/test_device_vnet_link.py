"""PACKET_VNET_HDR on a real veth pair: TSO super-segments out, GSO frames in.

With TSO and checksum offload off on the sending veth, the kernel cuts a super-segment sent
with a vnet header into MSS-sized segments itself (software GSO) and fills in their checksums:
a plain receiver must see valid, consecutive TCP segments. With TSO on, a veth passes the
super-segment through untouched, so a vnet receiver must see it whole, described by its
header (what GRO hands up on a real NIC).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from guest.stack.wire.addr import ipv4
from guest.stack.wire.vnet import F_NEEDS_CSUM, GSO_TCPV4, partial_csum_seed
from tests.netns.fixtures import VethPair, check, netns_pair, result, wait_ready

pytestmark = pytest.mark.netns

MSS = 1000
PAYLOAD = 2500  # two full segments and a short one


@pytest.fixture
def pair() -> Iterator[VethPair]:
    yield from netns_pair(tools=("ethtool", "sysctl"))


def _offloads(pair: VethPair, on: bool) -> None:
    state = "on" if on else "off"
    subprocess.run(
        ["ip", "netns", "exec", pair.ns_a, "ethtool", "-K", pair.if_a, "tso", state, "tx", state],
        check=True,
        capture_output=True,
    )


def _send_tso(
    pair: VethPair, sender: str, receiver: str, vnet: bool, count: int, timeout: float = 5.0
) -> tuple[dict, dict]:
    """One super-segment from A (`sender` kind) to B (`receiver` kind): both reports."""
    recv = {"kind": receiver, "vnet": vnet, "count": count, "timeout": timeout}
    worker = check(pair.ns_b, "ip_recv", iface=pair.if_b, **recv)
    wait_ready(worker)
    tso = {"mss": MSS, "payload_len": PAYLOAD}
    sent = result(check(pair.ns_a, "tso_send", iface=pair.if_a, kind=sender, dst=pair.mac_b, **tso))
    return sent, result(worker)


@pytest.mark.parametrize("sender", ["packet", "ring3", "ring2"])
def test_tso_frame_is_segmented_below_us(pair: VethPair, sender: str) -> None:
    _offloads(pair, on=False)
    sent, got = _send_tso(pair, sender, "packet", vnet=False, count=3)
    assert sent["accepted"] is True
    frames = got["frames"]
    assert [f["payload_len"] for f in frames] == [MSS, MSS, PAYLOAD - 2 * MSS]
    assert [f["seq"] for f in frames] == [1000, 1000 + MSS, 1000 + 2 * MSS]
    assert all(f["ip_csum_ok"] and f["tcp_csum_ok"] for f in frames), frames
    assert got["payload_sha"] == sent["payload_sha"]


@pytest.mark.parametrize("receiver", ["packet", "ring3", "ring2"])
def test_gso_frame_arrives_whole_with_its_header(pair: VethPair, receiver: str) -> None:
    _offloads(pair, on=True)
    sent, got = _send_tso(pair, "ring3", receiver, vnet=True, count=1)
    assert sent["accepted"] is True
    (frame,) = got["frames"]
    assert frame["flags"] & F_NEEDS_CSUM
    assert (frame["gso_type"], frame["gso_size"]) == (GSO_TCPV4, MSS)
    assert (frame["csum_start"], frame["csum_offset"]) == (34, 16)
    assert frame["payload_len"] == PAYLOAD and frame["ip_csum_ok"]
    # CHECKSUM_PARTIAL: the field holds the pseudo-header seed, not a checksum.
    seed = partial_csum_seed(ipv4("198.18.0.1"), ipv4("198.18.0.2"), 6, frame["tcp_len"])
    assert frame["tcp_csum_field"] == seed
    assert got["payload_sha"] == sent["payload_sha"]


def test_gso_frame_without_vnet_is_counted_not_delivered(pair: VethPair) -> None:
    """What GRO would do to a stack reading plain frames: a frame above the buffer (sized for
    the MTU) is cut by the kernel, counted, and never handed up half."""
    _offloads(pair, on=True)
    _, got = _send_tso(pair, "packet", "packet", vnet=False, count=1, timeout=1.0)
    assert got["frames"] == []
    assert got["stats"]["rx_truncated"] == 1

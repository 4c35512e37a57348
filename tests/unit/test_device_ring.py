"""PACKET_MMAP rings: ABI layout (pure) and real frames between two network namespaces.

The netns tests run every device in a subprocess inside its namespace (`tests/netns/`): a
sender and a receiver exchange deterministic frames and compare sha256 digests, counts and
sequence gaps, so "all arrived intact and in order" is checked without shipping frames back.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import pytest

from guest.stack.device import abi
from guest.stack.device.ring import (
    GSO_MAX_FRAME,
    RingGeometry,
    default_rx_geometry,
    default_tx_geometry,
    rx_mac_offset,
    tx_data_offset,
)
from tests.netns.fixtures import VethPair, check, netns_pair, receiver, result, send, wait_ready

# --- pure: the ABI as the kernel lays it out -------------------------------------------------


def test_struct_sizes_match_the_kernel() -> None:
    assert abi.TPACKET2_HDR.size == 32  # BUILD_BUG_ON(TPACKET_ALIGN(sizeof(*h.h2)) != 32)
    assert abi.TPACKET3_HDR.size == 48  # BUILD_BUG_ON(TPACKET_ALIGN(sizeof(*h.h3)) != 48)
    assert abi.TPACKET_BLOCK_DESC.size == 48
    assert (abi.TPACKET2_HDRLEN, abi.TPACKET3_HDRLEN) == (52, 68)
    assert abi.TPACKET_REQ.size == 16 and abi.TPACKET_REQ3.size == 28
    assert [abi.tpacket_align(x) for x in (0, 1, 16, 17, 52)] == [0, 16, 16, 32, 64]


def test_frame_offsets() -> None:
    # tpacket_rcv: netoff = TPACKET_ALIGN(tp_hdrlen + 16) (+ 10 with vnet), macoff = netoff - 14
    assert rx_mac_offset(abi.TPACKET_V2, False) == 80 - 14
    assert rx_mac_offset(abi.TPACKET_V3, False) == 96 - 14
    assert rx_mac_offset(abi.TPACKET_V3, True) == 106 - 14
    # tpacket_snd without TX_HAS_OFF: data at tp_hdrlen - sizeof(sockaddr_ll)
    assert (tx_data_offset(abi.TPACKET_V2), tx_data_offset(abi.TPACKET_V3)) == (32, 48)


@pytest.mark.parametrize("version", [abi.TPACKET_V2, abi.TPACKET_V3])
@pytest.mark.parametrize("vnet", [False, True])
@pytest.mark.parametrize("mtu", [1500, 9000])
def test_default_geometries_are_valid(version: int, vnet: bool, mtu: int) -> None:
    """What packet_set_ring checks, and room for the largest frame."""
    largest = GSO_MAX_FRAME if vnet else mtu + abi.ETH_HLEN
    for geo, tx in (
        (default_rx_geometry(version, mtu, vnet), False),
        (default_tx_geometry(version, mtu, vnet), True),
    ):
        assert geo.block_size % mmap.PAGESIZE == 0
        assert geo.frame_size % abi.TPACKET_ALIGNMENT == 0
        assert geo.frames_per_block >= 1 and geo.frame_nr == geo.frames_per_block * geo.block_nr
        if tx:
            assert geo.frame_size - tx_data_offset(version) >= largest + (10 if vnet else 0)
            assert geo.frame_nr >= 256
        elif version == abi.TPACKET_V3:
            room = geo.block_size - abi.TPACKET_BLOCK_DESC.size
            assert room >= rx_mac_offset(version, vnet) + largest
        else:
            assert geo.frame_size >= rx_mac_offset(version, vnet) + largest


def test_slot_offsets_never_straddle_blocks() -> None:
    geo = RingGeometry(8192, 3, 3000)  # 2 slots per block, 2192 bytes left over in each
    assert geo.slot_offsets(100) == [100, 3100, 8292, 11292, 16484, 19484]
    assert geo.size == 3 * 8192


# --- netns: real frames ------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[VethPair]:
    yield from netns_pair()


@pytest.fixture
def jumbo_pair() -> Iterator[VethPair]:
    yield from netns_pair(mtu=9000)


def _assert_intact(sent: dict, got: dict, count: int) -> None:
    assert sent["frames"] == count, sent
    assert got["frames"] == count, got
    assert got["sha256"] == sent["sha256"]
    assert (got["gaps"], got["reordered"]) == (0, 0)
    assert got["stats"]["rx_dropped"] == 0 and got["stats"]["rx_truncated"] == 0


@pytest.mark.netns
@pytest.mark.parametrize("version", ["2", "3"])
def test_burst_of_5000_wraps_both_rings(pair: VethPair, version: str) -> None:
    """5000 frames through a 32-slot TX ring into a ~250-frame RX ring: both wrap many
    times; every frame arrives, intact, in order."""
    tx = ["--block-size", "8192", "--block-nr", "8", "--frame-size", "2048"]  # 32 slots
    if version == "3":
        rx = ["--block-size", "32768", "--block-nr", "12", "--frame-size", "2048"]
    else:
        rx = ["--block-size", "16384", "--block-nr", "32", "--frame-size", "2048"]
    counting = receiver(pair, "--kind", "ring", "--version", version, *rx, "--count", "5000")
    paced = ["--batch", "16", "--gap-ms", "1"]
    sent = send(pair, "--kind", "ring", "--version", version, *tx, *paced, "--count", "5000")
    got = result(counting)
    _assert_intact(sent, got, 5000)
    assert sent["stats"]["tx_frames"] == 5000
    assert sent["stats"]["tx_batches"] >= 5000 // 32  # at least one send() per ring's worth
    assert got["stats"]["rx_batches"] > 1


@pytest.mark.netns
@pytest.mark.parametrize("version", ["2", "3"])
def test_batches_larger_than_the_tx_ring(pair: VethPair, version: str) -> None:
    """send_batch() of 100 frames into 32 slots: the ring fills with unflushed frames, is
    flushed mid-batch, and carries on; nothing is refused or lost."""
    tx = ["--block-size", "8192", "--block-nr", "8", "--frame-size", "2048"]  # 32 slots
    counting = receiver(pair, "--kind", "ring", "--version", version, "--count", "1000")
    sent = send(
        pair, "--kind", "ring", "--version", version, *tx, "--batch", "100", "--count", "1000"
    )
    _assert_intact(sent, result(counting), 1000)
    assert sent["stats"]["tx_full"] == 0
    assert sent["stats"]["tx_batches"] >= 1000 // 32


@pytest.mark.netns
@pytest.mark.parametrize("version", [2, 3])
def test_a_full_ring_hands_out_each_frame_once(pair: VethPair, version: int) -> None:
    """Regression: a batch larger than the ring used to wrap round to slots it had already
    handed out in the same call (they go back to the kernel only at the next call), so
    frames came out twice, and a stack saw stale segments and stalled."""
    worker = check(pair.ns_b, "ring_overflow", iface=pair.if_b, version=version)
    wait_ready(worker)
    send(pair, "--kind", "packet", "--count", "400", "--batch", "50")
    found = result(worker)
    assert found["dropped"] > 0  # the ring really overflowed
    assert 0 < found["got"] <= found["slots"] * (64 if version == 3 else 1)
    assert found["distinct"] == found["got"]


@pytest.mark.netns
@pytest.mark.parametrize("version", [2, 3])
def test_views_point_into_the_mapping_and_close_unmaps(pair: VethPair, version: int) -> None:
    worker = check(pair.ns_b, "ring_views", iface=pair.if_b, version=version)
    wait_ready(worker)
    send(pair, "--kind", "packet", "--count", "40", "--batch", "4", "--gap-ms", "2")
    found = result(worker)
    assert found["mapped_at_start"] is True
    assert found["is_device"] is True  # satisfies base.Device
    assert found["got"] >= 1
    assert found["all_in_mmap"] is True  # views of the mmap itself: no copy was made
    assert found["writable_views"] is True
    assert found["contents"][0][:12] == pair.mac_b.replace(":", "")
    assert found["contents"][0][24:28] == "88b5"
    assert found["old_views_released"] is True  # lifetime ends at the next recv_batch
    assert found["sub_slice_still_readable"] is True
    assert found["new_views_released_by_close"] is True
    assert found["mapped_after_close"] is False  # gone from /proc/self/maps
    assert found["mapped_property"] is False
    assert found["mmap_closed"] is True


@pytest.mark.netns
def test_close_while_caller_holds_a_slice(pair: VethPair) -> None:
    worker = check(pair.ns_b, "ring_close_with_live_slice", iface=pair.if_b)
    wait_ready(worker)
    send(pair, "--kind", "packet", "--count", "5")
    found = result(worker)
    assert found["got"] >= 1
    assert found["close_raised"] is None
    assert found["mapped_while_slice_alive"] is True  # cannot unmap under a live view ...
    assert found["slice_readable"] is True
    assert found["mapped_after_slice_dropped"] is False  # ... but it goes with the view


@pytest.mark.netns
@pytest.mark.parametrize(
    ("version", "geometry"),
    [
        ("3", ["--block-size", "4096", "--block-nr", "64", "--frame-size", "2048"]),
        ("2", ["--block-size", "65536", "--block-nr", "4", "--frame-size", "2048"]),
    ],
)
def test_rx_frames_larger_than_the_ring_slot_are_counted(
    jumbo_pair: VethPair, version: str, geometry: list[str]
) -> None:
    """6000-byte frames into 4 KiB V3 blocks / 2 KiB V2 slots: cut by the kernel, counted
    and dropped here; the small frames after them arrive whole."""
    ring = ["--kind", "ring", "--version", version, *geometry]
    counting = receiver(jumbo_pair, *ring, "--count", "5", "--no-check")
    for size in ("6000", "1000"):
        send(jumbo_pair, "--kind", "packet", "--count", "5", "--size", size)
    got = result(counting)
    assert got["frames"] == 5
    assert got["bytes"] == 5 * 1000
    assert got["stats"]["rx_truncated"] == 5


@pytest.mark.netns
def test_tx_frames_that_cannot_fit_raise(pair: VethPair) -> None:
    found = result(check(pair.ns_a, "oversize_tx", iface=pair.if_a))
    assert found["ring_max_tx_frame"] == found["mtu"] + 14
    assert found["ring_oversize"] == "ValueError"
    assert found["ring_ok_after"] is True
    assert found["ring_stats"]["tx_errors"] == 1 and found["ring_stats"]["tx_frames"] == 1
    assert found["packet_oversize"] == "ValueError"
    assert found["packet_is_device"] is True
    assert found["packet_ok_after"] is True
    assert found["packet_stats"]["tx_errors"] == 1

"""The floor path's frames (guest/traffic/floor.py): what is sent parses back, and a frame
damaged anywhere after its Ethernet addresses is refused, as TCP's checksum would refuse it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from guest.traffic.floor import ACK, DATA, FloorConnection, parse


class _Nic:
    """What a connection reads of its device to build frames."""

    mac = bytes.fromhex("525400000001")
    mtu = 1500

    def __init__(self) -> None:
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def conn() -> Iterator[FloorConnection]:
    nic = _Nic()
    yield FloorConnection(nic, 6001, 0xC0FFEE, bytes.fromhex("525400000002"), 1.0)  # type: ignore[arg-type]
    nic.close()


def test_a_frame_parses_back(conn: FloorConnection) -> None:
    conn.rcv_nxt = 41
    frame = memoryview(conn.frame(DATA, 7, b"payload" * 100))
    fields, payload = parse(frame)  # type: ignore[misc]
    assert fields == (DATA, 6001, 0xC0FFEE, 7, 41)
    assert bytes(payload) == b"payload" * 100
    assert conn.mss == 1448  # what a TCP segment with timestamps carries at MTU 1500


def test_padding_after_the_payload_is_ignored(conn: FloorConnection) -> None:
    """A short frame reaches the receiver padded to 60 bytes by the NIC."""
    frame = conn.frame(ACK, 3)
    padded = memoryview(frame + bytes(max(0, 60 - len(frame))))
    assert parse(padded) is not None


def test_any_damaged_byte_is_refused(conn: FloorConnection) -> None:
    frame = conn.frame(DATA, 1, bytes(range(200)))
    for at in range(14, len(frame)):
        damaged = bytearray(frame)
        damaged[at] ^= 0x40
        assert parse(memoryview(damaged)) is None, at


def test_other_ethertypes_and_short_frames_are_not_ours(conn: FloorConnection) -> None:
    frame = bytearray(conn.frame(DATA, 1, b"x"))
    assert parse(memoryview(frame[:20])) is None
    frame[12:14] = b"\x08\x00"
    assert parse(memoryview(frame)) is None

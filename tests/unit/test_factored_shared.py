"""The shared-ring boundary's transmit accounting, over an anonymous mapping standing in for
the kernel's rings and a fake driver that takes only part of what it is asked for.

A real `send()` on a TX ring can stop part-way and still succeed (tpacket_snd returns what it
sent when the socket buffer fills mid-ring); the slots after that stay requested. The protocol
domain must see them as pending and ring the driver again, or, once the ring is full of them,
it could never ring again and the connection would stall for good.
"""

from __future__ import annotations

import mmap
import os
import select
from collections.abc import Iterator

import pytest

from guest.stack.device import abi
from guest.stack.device.ring import RingGeometry, RingLayout
from guest.stack.factored.shared import DriverDoorbell, SharedRingDevice

SLOTS = 8
FRAME = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes(50)


class PartialDriver:
    """Takes at most `budget` requested slots per ring, from the kernel's cursor on, as
    tpacket_snd would when the socket buffer fills."""

    def __init__(self, dev: SharedRingDevice, bell: int, budget: int) -> None:
        self.dev, self.bell, self.budget = dev, bell, budget
        self.cursor = 0
        self.rings = 0

    def run(self) -> int:
        """Serve the rings so far; how many slots this took."""
        try:
            self.rings += os.eventfd_read(self.bell)
        except BlockingIOError:
            return 0
        view, slots, at = self.dev._view, self.dev._tx_slots, self.dev._tx_status
        taken = 0
        while taken < self.budget:
            status = int.from_bytes(
                view[slots[self.cursor] + at : slots[self.cursor] + at + 4], "little"
            )
            if not status & abi.TP_STATUS_SEND_REQUEST:
                break
            view[slots[self.cursor] + at : slots[self.cursor] + at + 4] = (
                abi.TP_STATUS_AVAILABLE.to_bytes(4, "little")
            )
            self.cursor = (self.cursor + 1) % len(slots)
            taken += 1
        return taken


@pytest.fixture
def device() -> Iterator[tuple[SharedRingDevice, int]]:
    frame_size = 2048
    rx = RingGeometry(4096, 1, frame_size)
    tx = RingGeometry(frame_size * SLOTS, 1, frame_size)
    layout = RingLayout("fake0", 2, 0, 1500, b"\x02" * 6, rx, tx)
    mm = mmap.mmap(-1, layout.size)
    bell = os.eventfd(0, os.EFD_NONBLOCK)
    epoll = select.epoll()
    dev = SharedRingDevice(
        layout, memoryview(mm), os.dup(epoll.fileno()), DriverDoorbell(os.dup(bell))
    )
    yield dev, bell
    dev.close()
    epoll.close()
    os.close(bell)
    mm.close()


def test_a_partly_taken_ring_stays_pending_and_is_rung_again(device) -> None:
    dev, bell = device
    driver = PartialDriver(dev, bell, budget=2)
    for _ in range(5):
        assert dev.send(FRAME)
    dev.flush()
    assert driver.run() == 2 and driver.rings == 1
    dev.flush()  # sees what was taken, rings again for the rest
    assert dev.tx_pending == 3
    assert driver.run() == 2 and driver.rings == 2
    dev.flush()
    assert driver.run() == 1 and driver.rings == 3
    dev.flush()  # everything taken: nothing left to ring for
    assert dev.tx_pending == 0
    assert driver.run() == 0 and driver.rings == 3


def test_a_ring_full_of_requested_slots_still_rings_the_driver(device) -> None:
    dev, bell = device
    driver = PartialDriver(dev, bell, budget=0)  # the socket buffer is full
    for _ in range(SLOTS):
        assert dev.send(FRAME)
    dev.flush()
    driver.run()
    assert not dev.send(FRAME)  # every slot still requested: the frame is refused...
    assert dev.stats.tx_full == 1
    driver.budget = SLOTS  # ...but the driver was rung again, and now it has room
    assert driver.rings == 1 and os.eventfd_read(bell) == 1
    os.eventfd_write(bell, 1)
    assert driver.run() == SLOTS
    assert dev.send(FRAME)
    dev.flush()
    assert dev.tx_pending == 1


def test_frames_the_driver_took_between_flushes_are_not_rung_for_twice(device) -> None:
    dev, bell = device
    driver = PartialDriver(dev, bell, budget=SLOTS)
    for _ in range(3):
        assert dev.send(FRAME)
    dev.flush()
    assert dev.tx_pending == 3  # the driver has not run yet (as when it is not preempting)
    assert driver.run() == 3
    dev.flush()
    assert dev.tx_pending == 0 and driver.rings == 1
    assert driver.run() == 0  # no second ring


def test_a_batch_into_a_ring_the_driver_emptied_counts_what_it_took(device) -> None:
    dev, bell = device
    driver = PartialDriver(dev, bell, budget=SLOTS)
    assert dev.send_batch([FRAME] * SLOTS) == SLOTS
    assert dev.tx_pending == SLOTS  # rung, but the driver has not run yet
    assert driver.run() == SLOTS
    assert dev.send_batch([FRAME] * 3) == 3  # reuses slots taken but not yet counted
    assert dev.tx_pending == 3
    assert driver.run() == 3
    dev.flush()
    assert dev.tx_pending == 0

"""The driver domain: the only holder of the NIC, a pump between it and the link's rings.

It knows nothing of IP: received frames are copied once from the kernel's packet ring into the
link's RX ring, and frames the protocol domain wrote into the TX ring are handed to the kernel's
TX ring. What the protocol domain writes is not trusted: a frame the kernel refuses is counted
and skipped, and a corrupt ring index stops the pump for good (counted, reported), never a
crash or an endless loop.

Sleeping follows the link's doorbell protocol (`link.LinkEnd`): the pump polls the packet
socket and its own doorbell only after arming its flag and finding the TX ring empty.
"""

from __future__ import annotations

import select
from dataclasses import dataclass

from guest.stack.device.base import Device

from .link import LinkEnd

BATCH = 256
#: How often a pump whose RX ring is full looks again (the protocol frees slots without a ring).
FULL_RETRY_MS = 1


@dataclass(slots=True)
class PumpStats:
    rx_frames: int = 0  # frames moved NIC -> protocol
    rx_link_full: int = 0  # times the RX ring had no free slot (frames left in the NIC ring)
    tx_frames: int = 0  # frames moved protocol -> NIC
    tx_refused: int = 0  # frames the kernel refused (malformed or too long): skipped
    corrupt: int = 0  # 1 once a ring index from the protocol domain was impossible
    wakeups: int = 0  # polls that slept


class DriverPump:
    """Moves frames between `dev` and the link until `stop()`."""

    def __init__(self, dev: Device, end: LinkEnd) -> None:
        self.dev = dev
        self.end = end
        self.stats = PumpStats()
        self._backlog: list[memoryview] = []  # TX frames popped, waiting for the NIC's room
        self._stop = False

    def stop(self, *_args) -> None:
        self._stop = True

    def _receive(self) -> bool:
        """NIC -> RX ring; True if anything moved."""
        out, dev = self.end.out, self.dev
        moved = 0
        for _ in range(16):
            free = out.free()
            if free == 0:
                self.stats.rx_link_full += 1
                break
            frames = dev.recv_batch(min(BATCH, free))
            if not frames:
                break
            moved += out.push_many(frames)  # the one copy; publishes the ring's head
            self.end.notifier.notify()
        self.stats.rx_frames += moved
        return moved > 0

    def _transmit(self) -> bool:
        """TX ring -> NIC; True if anything moved."""
        inbox, dev = self.end.inbox, self.dev
        frames = self._backlog or inbox.pop_many(BATCH)
        if not frames:
            return False
        taken = 0
        for frame in frames:
            try:
                if not dev.send(frame):
                    break  # the NIC queue is full: retry these when it drains
            except ValueError:
                self.stats.tx_refused += 1  # never sendable: skip it
            taken += 1
        dev.flush()
        inbox.release(taken)
        self._backlog = frames[taken:]
        self.stats.tx_frames += taken
        return taken > 0

    def run(self) -> None:
        end, dev = self.end, self.dev
        poller = select.poll()
        dev_fd, bell_fd = dev.fileno(), end.fileno()
        poller.register(bell_fd, select.POLLIN)
        dev_events = -1
        while not self._stop:
            busy = self._receive() | self._transmit()
            if end.inbox.corrupt or end.out.corrupt:
                self.stats.corrupt = 1
                break  # the protocol domain wrote an impossible index: stop moving frames
            if busy:
                continue
            link_full = end.out.free() == 0
            waiting_nic = bool(self._backlog or dev.tx_pending)
            events = (0 if link_full else select.POLLIN) | (select.POLLOUT if waiting_nic else 0)
            if events != dev_events:
                poller.register(dev_fd, events)  # register() replaces the mask
                dev_events = events
            timeout = FULL_RETRY_MS if link_full or waiting_nic else 500
            if not end.prepare_to_sleep():
                continue
            self.stats.wakeups += 1
            poller.poll(timeout)
            end.woke()
            if dev.tx_pending:
                dev.flush()

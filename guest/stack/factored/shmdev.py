"""The protocol domain's NIC: a `Device` whose frames come and go through the link's rings.

To `NetStack`, `Nic` and the stack's event loop (`guest.stack.loop.StackLoop`) this is a device like
the AF_PACKET ones, so the protocol domain runs exactly the code the monolithic stack runs; the
difference between the two paths is this class and the driver domain behind it.

Frames arrive as views straight into the RX ring (no copy: the driver copied them there once,
from the kernel's packet ring); as the device contract says, they stay valid until the next
`recv_batch`, which hands their slots back to the driver. Frames to send are written into the
TX ring (the one copy, the same one a PACKET_MMAP TX ring costs) and published by `flush`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from guest.stack.device.base import DeviceStats, Frame, send_each

from .link import LinkEnd


class ShmDevice:
    """The protocol domain's end of the link, seen as a `Device`."""

    def __init__(self, end: LinkEnd, name: str, mtu: int, mac: bytes, vnet_hdr_len: int) -> None:
        self.end = end
        self.name = name
        self.mtu = mtu
        self.mac = mac
        self.vnet_hdr_len = vnet_hdr_len
        self._stats = DeviceStats()
        self._views: list[memoryview] = []
        self._unpublished = 0

    @property
    def stats(self) -> DeviceStats:
        return self._stats

    def fileno(self) -> int:
        return self.end.fileno()

    # --- sleeping (called by the event loop: see guest.stack.loop.StackLoop.run) --------

    def prepare_to_sleep(self) -> bool:
        """Ask the driver for a ring before the loop sleeps; False if frames already wait."""
        return self.end.prepare_to_sleep()

    def rx_waiting(self) -> bool:
        return self.end.inbox.available() > 0

    # --- receive ----------------------------------------------------------------------------

    def recv_batch(self, max_frames: int = 64) -> list[memoryview]:
        end = self.end
        end.woke()
        inbox = end.inbox
        for view in self._views:
            view.release()
        inbox.release(inbox.pending())  # the previous batch's slots go back to the driver
        views = inbox.pop_many(max_frames)
        self._views = views
        if views:
            stats = self._stats
            stats.rx_frames += len(views)
            stats.rx_bytes += sum(map(len, views)) - len(views) * self.vnet_hdr_len
            stats.rx_batches += 1
        return views

    # --- transmit ---------------------------------------------------------------------------

    @property
    def tx_pending(self) -> int:
        """Always 0: a frame in the TX ring is the driver's to send."""
        return 0

    def send(self, frame: Frame, header: bytes = b"") -> bool:
        out = self.end.out
        slot = out.reserve()
        if slot is None:
            self._stats.tx_full += 1
            return False
        h = len(header)
        n = h + len(frame)
        if n > len(slot):
            self._stats.tx_errors += 1
            raise ValueError(f"{self.name}: {n}-byte frame exceeds the link's {len(slot)}")
        if h:
            slot[:h] = header
        slot[h:n] = frame
        out.commit(n)
        self._unpublished += 1
        stats = self._stats
        stats.tx_frames += 1
        stats.tx_bytes += n - self.vnet_hdr_len
        return True

    def send_batch(self, frames: Iterable[Frame], headers: Sequence[bytes] | None = None) -> int:
        queued = send_each(self.send, frames, headers)
        self.flush()
        return queued

    def flush(self) -> None:
        """Publish the frames written since the last flush and ring the driver if it sleeps."""
        if self._unpublished:
            self._unpublished = 0
            self._stats.tx_batches += 1
            self.end.kick()

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._views = []
        self.end.close()

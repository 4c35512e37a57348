"""What the stack's event loop needs from a NIC, whatever moves the frames underneath.

The loop polls `fileno()`, then drains `recv_batch()` and pushes replies with `send()` /
`send_batch()` + `flush()`. Two implementations exist: `packet.PacketDevice` (one syscall per
frame, copies) and `ring.RingDevice` (PACKET_MMAP rings shared with the kernel: many frames
per syscall, no copy on receive). Keeping the contract this small is what lets the benchmark
swap them without touching the stack.

Frame lifetime rule: the `memoryview`s returned by `recv_batch()` are valid only until the
next `recv_batch()` (or `close()`) on the same device. At that call the device gives their
memory back (a ring slot goes back to the kernel, a receive buffer is reused) and *releases*
the views it handed out, so touching one afterwards raises `ValueError` instead of silently
reading a newer frame. This is what allows a ring to hand out views into shared memory with no
copy: the kernel cannot overwrite a slot until user space returns it. Anything that must live
longer (a TCP segment queued out of order, say) must be copied with `bytes(view)`. Slices taken
*from* a frame (`frame[14:]`) are not released by the device, but their memory is recycled
just the same: treat them by the same rule.

Send rule: `send()` only queues; `flush()` hands the queue to the kernel (a device may hand a
frame over earlier, the plain socket does so at once). If the kernel has no room (socket
buffer or NIC queue full), frames stay queued, `tx_pending` says how many, and the next
`flush()` retries. `send()` returns False when the device itself has no room right now
(counted in `stats.tx_full`): the caller may drop the frame, as a NIC would, or wait for
`fileno()` to become writable and retry. A frame that can never be sent (longer than the
device takes, or refused by the kernel as malformed) raises `ValueError`.

With `vnet_hdr_len == 10` every received frame starts with a `virtio_net_hdr` and every frame
sent must start with one (see `wire/vnet.py`); otherwise frames are plain Ethernet frames without
FCS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, TypeAlias, runtime_checkable

#: What `send()` accepts.
Frame: TypeAlias = bytes | bytearray | memoryview


@dataclass(slots=True)
class DeviceStats:
    """Counters only grow. The kernel's drop counters are read on `Device.stats` access."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    #: `recv_batch()` calls that returned at least one frame.
    rx_batches: int = 0
    #: Transmit syscalls that handed at least one frame to the kernel.
    tx_batches: int = 0
    #: Frames the kernel dropped because our socket buffer or ring was full
    #: (PACKET_STATISTICS tp_drops): the receiver did not keep up.
    rx_dropped: int = 0
    #: Frames larger than the receive buffer or ring slot: cut by the kernel, then discarded
    #: here (a partial frame is of no use to a stack).
    rx_truncated: int = 0
    #: TPACKET_V3 only: times the kernel found every block still held by user space
    #: (PACKET_STATISTICS tp_freeze_q_cnt).
    rx_ring_full: int = 0
    #: `send()` calls refused because the socket buffer or the TX ring had no room.
    tx_full: int = 0
    #: Frames the kernel rejected (malformed, too long); with a TX ring they are skipped.
    tx_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain dict for JSON reports."""
        return asdict(self)


@runtime_checkable
class Device(Protocol):
    """A link-layer device as the stack sees it. See the module docstring for the rules."""

    #: Interface name, for logs and reports.
    name: str
    #: IP MTU of the link (payload of an Ethernet frame, 1500 on a plain e1000).
    mtu: int
    #: The interface's 6-byte MAC address.
    mac: bytes
    #: 10 when frames carry a virtio_net_hdr in front (PACKET_VNET_HDR), else 0.
    vnet_hdr_len: int

    @property
    def stats(self) -> DeviceStats:
        """Counters; reading them also folds in the kernel's drop counters."""
        ...

    def fileno(self) -> int:
        """File descriptor to poll: readable when frames wait, writable when send has room."""
        ...

    def recv_batch(self, max_frames: int = 64) -> list[memoryview]:
        """Up to `max_frames` received frames, never blocking (empty list when none wait).

        The views are valid until the next `recv_batch()` or `close()` (see module docstring).
        """
        ...

    def send(self, frame: Frame, header: bytes = b"") -> bool:
        """Queue `header` + `frame` as one frame; False when there is no room right now
        (nothing was queued). `header` lets a stack whose frames have no headroom put the
        virtio_net_hdr in front without joining the two itself."""
        ...

    def send_batch(self, frames: Iterable[Frame], headers: Sequence[bytes] | None = None) -> int:
        """Queue frames in order and flush; returns how many were queued (stops at the first
        refusal, so the caller knows exactly which ones to retry or drop). `headers[i]`, if
        given, goes in front of the i-th frame, as in `send`. A frame that can never be sent
        raises ValueError; the frames before it stay queued."""
        ...

    def flush(self) -> None:
        """Hand queued frames to the kernel (one syscall for a ring), never blocking."""
        ...

    @property
    def tx_pending(self) -> int:
        """Frames queued that `flush()` could not hand over yet (socket buffer or NIC queue
        full): while non-zero, poll `fileno()` for writability and flush again."""
        ...

    def close(self) -> None:
        """Release socket and memory; frames from `recv_batch()` become invalid. Idempotent."""
        ...


def send_each(
    send: Callable[[Frame, bytes], bool],
    frames: Iterable[Frame],
    headers: Sequence[bytes] | None = None,
) -> int:
    """`send(frame, header)` each frame in order until one is refused; how many were taken.
    The `send_batch` of a device with no faster way than one `send` per frame."""
    sent = 0
    if headers is None:
        for frame in frames:
            if not send(frame, b""):
                break
            sent += 1
        return sent
    for frame, header in zip(frames, headers, strict=True):
        if not send(frame, header):
            break
        sent += 1
    return sent

"""The factored stack's boundary over the kernel's own packet rings (`--link uring`, the
default, and `--link shared`): the rings shared with the protocol domain, the packet socket
left with the driver domain.

This is EROS's factoring (`shared/REFERENCE.md`) mapped onto Linux. The NIC's DMA buffers of
that design are the PACKET_MMAP rings here; the driver domain owns the device (the AF_PACKET
socket: binding, options, the transmit syscall), the protocol domain reads and writes packet
buffers in place:

* **receive**: the protocol domain reads frames where the kernel wrote them (the very
  `RingDevice` code of the monolithic stack) and sleeps on an epoll fd, made by the launcher,
  that watches the packet socket. Polling an epoll fd says only "a frame is ready": it cannot
  be used to send, bind or configure anything. So receiving costs no crossing at all.
* **transmit**: the protocol domain fills TX slots in place, then asks for them to be sent
  (`Transmitter`). Over `shared` it rings the driver's eventfd doorbell (`DriverDoorbell`) and
  the driver (`Kicker`) makes the one `send()` that hands every requested slot to the kernel:
  the crossing EROS's design pays per transmitted batch, a wakeup of another process, where
  the monolithic stack makes the syscall itself. Over `uring` it submits that same `send()`
  on a ring that can do nothing else (`uring.py`), and the kernel runs it inline: the
  protocol domain pays a submission where the monolithic stack pays a syscall (a little more:
  `guest.bench.transmit` measures both), and the driver is never woken.

The alternative boundary, `--link copy` (`link.py`, `driver.py`, `shmdev.py`), copies every
frame through rings between the two domains, so the driver also sees and vets what crosses; it
costs a copy and two extra wakeups per frame batch, which the benchmark measures.

What a compromised protocol domain can do here: write garbage into the TX ring (the kernel
checks every slot's length and format, and PACKET_LOSS skips what it refuses, as with any user
of a TX ring), corrupt RX slot status words (which loses only its own frames), and ask for
transmission (by either means: the same power). It cannot reach the socket: the fd is never
in its table, so it cannot bind, configure, receive on or close it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from guest.stack.device import abi
from guest.stack.device.ring import RingDevice, RingLayout, open_ring_socket
from guest.stack.session.shm import map_shared


class SharedNic:
    """The launcher's side: the packet socket with its rings, the epoll fd that reports its
    readiness, and the driver's doorbell. Made before the domains are forked (as root)."""

    def __init__(self, iface: str, version: int, vnet_hdr: bool) -> None:
        self.sock, self.layout = open_ring_socket(iface, version=version, vnet_hdr=vnet_hdr)
        self.epoll: select.epoll | None = None
        self.bell = -1
        try:
            self.epoll = select.epoll()
            self.epoll.register(self.sock.fileno(), select.EPOLLIN)
            self.bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def driver_fds(self) -> list[int]:
        """What the driver domain keeps: the socket and its doorbell."""
        return [self.sock.fileno(), self.bell]

    def protocol_fds(self, transmit_fd: int) -> list[int]:
        """What the protocol domain keeps: the epoll fd, then what it asks for transmission
        with (the driver's doorbell, or the send-only io_uring's fd)."""
        assert self.epoll is not None
        return [self.epoll.fileno(), transmit_fd]

    def map_rings(self) -> memoryview:
        """Map the rings read-write through libc (no fd kept): fork the protocol domain after
        this and it inherits the mapping, never the socket."""
        return map_shared(self.sock.fileno(), self.layout.size, writable=True)

    def close(self) -> None:
        """Close this process's copies (the domains keep theirs)."""
        if self.epoll is not None:
            self.epoll.close()
            self.epoll = None
        if self.bell >= 0:
            os.close(self.bell)
            self.bell = -1
        self.sock.close()


class DriverDoorbell:
    """Transmit by ringing the driver domain's eventfd: `Kicker` makes the `send()` (`--link
    shared`). The alternative, `uring.UringTransmit`, has the kernel do it (`--link uring`)."""

    stats = None  # the driver domain counts the rings (`KickerStats`)

    def __init__(self, bell: int) -> None:
        self.fd = bell

    def request(self) -> None:
        os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Transmitter(Protocol):
    """How the protocol domain gets the kernel to take the TX slots it requested."""

    stats: Any

    def request(self) -> None: ...

    def close(self) -> None: ...


class SharedRingDevice(RingDevice):
    """The protocol domain's NIC: the kernel's rings, mapped, without the socket.

    Everything the monolithic stack's `RingDevice` does on the rings is inherited unchanged;
    only what needs the socket differs: readiness comes from the epoll fd, and `flush` asks
    `transmit` (the driver's doorbell, or the send-only io_uring) instead of calling `send()`.
    What the kernel took is read from the slots, as with a local ring: `tx_pending` counts the
    frames still requested, and the stack's loop flushes again while any are. The driver cannot
    tell that itself: a `send()` that stops part-way (socket buffer full mid-ring) returns
    success, and without a new request the rest would wait for ever once the ring is full.
    """

    def __init__(
        self, layout: RingLayout, view: memoryview, epoll_fd: int, transmit: Transmitter
    ) -> None:
        self._sock = None  # never: the driver domain holds it
        self._mmap = None
        self._epoll_fd = epoll_fd
        self.transmit = transmit
        self._adopt(layout, view)

    def fileno(self) -> int:
        return self._epoll_fd

    def _read_kernel_drops(self) -> None:
        """The kernel's drop counters need the socket: the driver reports them."""

    def _request_transmit(self) -> None:
        self.transmit.request()

    def owns(self, frame: memoryview) -> bool:
        return self._view is not None and frame.obj is self._view.obj

    @property
    def mapped(self) -> bool:
        return not self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._release()
        self._closed = True
        self._view.release()  # the mapping goes with the last view (shm.map_shared)
        with contextlib.suppress(OSError):
            os.close(self._epoll_fd)
        self.transmit.close()


@dataclass(slots=True)
class KickerStats:
    wakeups: int = 0  # times the doorbell (or the retry timer) woke the driver
    kicks: int = 0  # send() calls that handed the TX ring to the kernel
    no_room: int = 0  # kicks the kernel refused for now (socket buffer or queue full)
    errors: int = 0  # kicks that failed otherwise (counted, never fatal: see `run`)
    last_error: str = ""


#: How soon a kick the kernel refused for lack of room is retried (it also waits for POLLOUT).
RETRY_MS = 1


class Kicker:
    """The driver domain over shared rings: sleeps on its doorbell, and on every ring makes
    the kernel transmit whatever the protocol domain requested in the TX ring."""

    def __init__(self, sock: socket.socket, bell: int) -> None:
        self.sock = sock
        self.bell = bell
        self.stats = KickerStats()
        self._stop = False

    def stop(self, *_args) -> None:
        self._stop = True

    def kick(self) -> bool:
        """One `send()` of the TX ring; False if the kernel had no room (retry later).

        Other errors are counted, not raised: what the protocol domain wrote into the ring
        must never be able to kill the driver domain. The kernel skips bad slots itself
        (PACKET_LOSS), so an error here is the interface's, e.g. ENETDOWN.
        """
        self.stats.kicks += 1
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as exc:
            if abi.is_no_room(exc):
                self.stats.no_room += 1
                return False
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
        return True

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.bell, select.POLLIN)
        sock_fd = self.sock.fileno()
        retrying = False
        while not self._stop:
            poller.poll(RETRY_MS if retrying else 500)
            try:
                os.eventfd_read(self.bell)
            except BlockingIOError:
                if not retrying:
                    continue  # the timeout: nothing was asked
            self.stats.wakeups += 1
            done = self.kick()
            if done == retrying:  # changed: wait for room in the socket, or stop waiting
                if retrying:
                    poller.unregister(sock_fd)
                else:
                    poller.register(sock_fd, select.POLLOUT)
            retrying = not done

    def device_stats(self) -> dict[str, int]:
        """The kernel's drop counters (PACKET_STATISTICS), which only the socket's holder reads."""
        drops, freezes = abi.read_drops(self.sock)
        return {"rx_dropped": drops, "rx_ring_full": freezes}

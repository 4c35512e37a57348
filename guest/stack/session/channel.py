"""One socket's data channel: two rings, two shared regions, three doorbells.

This is the EROS session's "four rings" (transmit and receive, each split into a part the client
may touch and a part only the stack may touch), grouped by *who writes*, one memfd each:

    stack region (stack writes; the client maps it PROT_READ, sealed F_SEAL_FUTURE_WRITE)
        0    status line: eof (peer closed), error (errno; 0 = none), closed (stack done)
        64   stack flags: want_tx (ring me on new TX data), want_rxspace (ring me on RX space)
        128  TX ring consumer area (tail)
        192  RX ring producer area (head, slots: received data and its lengths)
    client region (client writes; the stack maps it PROT_READ)
        0    client flags: rx_waiting (a reader sleeps: on RX data or status),
             tx_waiting (a writer sleeps: on TX space or status)
        64   RX ring consumer area (tail)
        128  TX ring producer area (head, slots: data to send and its lengths)

So received data and its framing live where the client cannot write, and nothing the client
writes is trusted by the stack: the TX ring's head and lengths and the RX ring's tail are
validated by the ring code (see `ring`), and a corrupt channel is reset, alone.

Doorbells, one per sleeper: `stack_bell` is rung by the client (TX data, RX space) and polled by
the stack's event loop; `rx_bell` and `tx_bell` are rung by the stack (RX data / TX space, and
both on a status change) and waited on by the client's reading and writing threads. A bell with
two sleepers would lose wakeups (one drains the eventfd the other was about to sleep on), and a
reader and a writer on one socket is the normal full-duplex case. Each bell is rung only when
the flag of the side it wakes says so (see `doorbell`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import Final

from .doorbell import BellStats, Doorbell, Notifier, SleepFlag, Waiter
from .ring import RingConsumer, RingGeometry, RingProducer
from .shm import CACHE_LINE, SharedRegion, fence
from .stream import StreamReader, StreamWriter

CHANNEL_FDS: Final = 5  # stack region, client region, rx bell, tx bell, stack bell

# stack region
_STATUS: Final = 0
_STACK_FLAGS: Final = CACHE_LINE
_TX_TAIL: Final = 2 * CACHE_LINE
_RX_RING: Final = 3 * CACHE_LINE
# client region
_CLIENT_FLAGS: Final = 0
_RX_TAIL: Final = CACHE_LINE
_TX_RING: Final = 2 * CACHE_LINE

# words in the status line
EOF: Final = 0
ERROR: Final = 1
CLOSED: Final = 2  # the stack is done with the connection: sending fails with EPIPE
# words in the stack flags line
WANT_TX: Final = 0
WANT_RXSPACE: Final = 1
# words in the client flags line
RX_WAITING: Final = 0
TX_WAITING: Final = 1

#: 32 slots of 16 KiB - 64 B: 512 KiB each way, Linux's default socket buffers order of size.
DEFAULT_GEOMETRY: Final = RingGeometry(slots=32, slot_size=16 * 1024 - CACHE_LINE)


@dataclass(frozen=True, slots=True)
class ChannelLayout:
    tx: RingGeometry = DEFAULT_GEOMETRY
    rx: RingGeometry = DEFAULT_GEOMETRY

    @property
    def stack_size(self) -> int:
        return _RX_RING + self.rx.producer_size

    @property
    def client_size(self) -> int:
        return _TX_RING + self.tx.producer_size


class StackChannel:
    """The stack's end: consumes TX (`tx`), produces RX (`rx`), owns the status words."""

    __slots__ = (
        "_flags",
        "_status",
        "_wants",
        "client_region",
        "data_notifier",
        "layout",
        "rx",
        "rx_bell",
        "rx_ring",
        "space_notifier",
        "stack_bell",
        "stack_region",
        "tx",
        "tx_bell",
        "tx_ring",
    )

    def __init__(
        self, layout: ChannelLayout, stats: BellStats | None = None, always_ring: bool = False
    ) -> None:
        self.layout = layout
        self.stack_region = SharedRegion.create(layout.stack_size, "stackbed-stack")
        try:
            self.client_region = SharedRegion.create_for_peer(layout.client_size, "stackbed-app")
        except BaseException:
            self.stack_region.close()
            raise
        self.stack_bell = Doorbell()
        self.rx_bell = Doorbell()
        self.tx_bell = Doorbell()
        sv, cv = self.stack_region.view, self.client_region.view
        self._status = sv[_STATUS : _STATUS + 24].cast("Q")
        self._flags = sv[_STACK_FLAGS : _STACK_FLAGS + 16].cast("Q")
        self._wants = (SleepFlag(self._flags, WANT_TX), SleepFlag(self._flags, WANT_RXSPACE))
        self.tx_ring = RingConsumer(layout.tx, cv[_TX_RING:], sv[_TX_TAIL:_RX_RING])
        self.rx_ring = RingProducer(layout.rx, sv[_RX_RING:], cv[_RX_TAIL:_TX_RING])
        self.tx = StreamReader(self.tx_ring)
        self.rx = StreamWriter(self.rx_ring)
        peer_flags = cv[_CLIENT_FLAGS : _CLIENT_FLAGS + 16].cast("Q")
        self.data_notifier = Notifier(self.rx_bell, peer_flags, RX_WAITING, stats, always_ring)
        self.space_notifier = Notifier(self.tx_bell, peer_flags, TX_WAITING, stats, always_ring)

    def peer_fds(self) -> list[int]:
        """Fresh fds for the client, in protocol order: stack region (read-only), client region,
        rx bell, tx bell (it waits on those), stack bell (it rings that). The caller closes them
        after sending."""
        return [
            self.stack_region.peer_fd(readonly=True),
            self.client_region.peer_fd(readonly=False),
            os.dup(self.rx_bell.fd),
            os.dup(self.tx_bell.fd),
            os.dup(self.stack_bell.fd),
        ]

    @property
    def corrupt(self) -> bool:
        return self.tx_ring.corrupt or self.rx_ring.corrupt

    def want(self, which: int, on: bool) -> None:
        """Arm (a fresh epoch) or disarm WANT_TX / WANT_RXSPACE."""
        flag = self._wants[which]
        if on:
            flag.arm()
        else:
            flag.disarm()

    def wanted(self, which: int) -> bool:
        return self._wants[which].armed

    def set_status(self, eof: bool = False, error: int = 0, closed: bool = False) -> None:
        """EOF, an error or the end for the client, stored after all data published so far;
        wakes a sleeping reader and a sleeping writer (both care)."""
        if error and not self._status[ERROR]:
            self._status[ERROR] = error
        if eof:
            self._status[EOF] = 1
        if closed:
            self._status[CLOSED] = 1
        self.data_notifier.notify()
        self.space_notifier.notify()

    @property
    def error(self) -> int:
        return self._status[ERROR]

    def arm_tx(self) -> bool:
        """Ask for a ring on the next TX data; True if data is already there (then disarmed:
        the caller should pump instead of waiting)."""
        self.want(WANT_TX, True)
        fence()
        if self.tx.readable():
            self.want(WANT_TX, False)
            return True
        return False

    def close(self) -> None:
        for view in (self._status, self._flags, self.data_notifier.flags):
            view.release()
        self.tx_ring.release_views()
        self.rx_ring.release_views()
        self.stack_region.close()
        self.client_region.close()
        for bell in (self.stack_bell, self.rx_bell, self.tx_bell):
            bell.close()


class ClientChannel:
    """The application's end: produces TX, consumes RX, sleeps on `rx_waiter`/`tx_waiter`."""

    __slots__ = (
        "_status",
        "client_region",
        "data_notifier",
        "layout",
        "rx",
        "rx_ring",
        "rx_waiter",
        "space_notifier",
        "stack_region",
        "tx",
        "tx_ring",
        "tx_waiter",
    )

    def __init__(
        self,
        layout: ChannelLayout,
        fds: list[int],
        hangup_fd: int | None = None,
        stats: BellStats | None = None,
        always_ring: bool = False,
        spin: float | None = None,
    ) -> None:
        """Takes ownership of the fds of `StackChannel.peer_fds` (closes the region fds once
        mapped: the mapping keeps the memory)."""
        if len(fds) != CHANNEL_FDS:
            for fd in fds:
                _close(fd)
            raise OSError(errno.EPROTO, f"channel needs {CHANNEL_FDS} fds, got {len(fds)}")
        stack_fd, client_fd, rx_bell_fd, tx_bell_fd, stack_bell_fd = fds
        self.layout = layout
        try:
            self.stack_region = SharedRegion.attach(stack_fd, layout.stack_size, writable=False)
            self.client_region = SharedRegion.attach(client_fd, layout.client_size, writable=True)
        except BaseException:
            for fd in fds:
                _close(fd)
            raise
        self.stack_region.close_fd()
        self.client_region.close_fd()
        stats = stats if stats is not None else BellStats()
        sv, cv = self.stack_region.view, self.client_region.view
        self._status = sv[_STATUS : _STATUS + 24].cast("Q")
        stack_flags = sv[_STACK_FLAGS : _STACK_FLAGS + 16].cast("Q")
        self.tx_ring = RingProducer(layout.tx, cv[_TX_RING:], sv[_TX_TAIL:_RX_RING])
        self.rx_ring = RingConsumer(layout.rx, sv[_RX_RING:], cv[_RX_TAIL:_TX_RING])
        self.tx = StreamWriter(self.tx_ring)
        self.rx = StreamReader(self.rx_ring)
        stack_bell = Doorbell(stack_bell_fd)
        self.data_notifier = Notifier(stack_bell, stack_flags, WANT_TX, stats, always_ring)
        self.space_notifier = Notifier(stack_bell, stack_flags, WANT_RXSPACE, stats, always_ring)
        own = cv[_CLIENT_FLAGS : _CLIENT_FLAGS + 16].cast("Q")
        rx_bell, tx_bell = Doorbell(rx_bell_fd), Doorbell(tx_bell_fd)
        self.rx_waiter = Waiter(rx_bell, own, RX_WAITING, stats, spin, hangup_fd)
        self.tx_waiter = Waiter(tx_bell, own, TX_WAITING, stats, spin, hangup_fd)

    @property
    def eof(self) -> bool:
        return bool(self._status[EOF])

    @property
    def error(self) -> int:
        return self._status[ERROR]

    @property
    def closed(self) -> bool:
        return bool(self._status[CLOSED])

    def close(self) -> None:
        for view in (self._status, self.data_notifier.flags, self.rx_waiter.flag.words):
            view.release()
        self.tx_ring.release_views()
        self.rx_ring.release_views()
        self.stack_region.close()
        self.client_region.close()
        for bell in (self.data_notifier.bell, self.rx_waiter.bell, self.tx_waiter.bell):
            bell.close()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)

"""The driver<->protocol boundary of the factored stack: two frame rings in shared memory.

The driver domain owns the NIC (an AF_PACKET device), the protocol domain owns IP/TCP/UDP/ARP;
frames cross between them through two single-producer single-consumer rings of packet buffers
(`session.ring`), with an eventfd doorbell each way that is rung only when the other side
sleeps (`session.doorbell`). Nothing else crosses: no pipe, no socket, no copy into a kernel
buffer.

Layout, grouped by *who writes* (one memfd each, so that each side maps the other's region
read-only, from a read-only fd: neither `PROT_WRITE` nor a later `mprotect` can make it
writable):

    driver region (driver writes)              protocol region (protocol writes)
        0    driver's sleep flag                   0    protocol's sleep flag
        64   TX ring consumer area (tail)          64   RX ring consumer area (tail)
        128  RX ring producer area (frames in)     128  TX ring producer area (frames out)

The two ends are mirror images: each produces into one ring and consumes the other, so one
class (`LinkEnd`) serves both. One writer per index and data published before the index make
the rings correct without atomics (see `session.ring`).

The launcher (root) creates the link before it forks the domains (`FrameLink`), and each domain
calls `FrameLink.end(role)` after the fork: it maps its own region writable and the peer's
read-only, then closes every region fd, so that a confined domain holds no fd through which it
could map the other's memory writable.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from dataclasses import dataclass
from typing import Final

from guest.stack.session.doorbell import BellStats, Doorbell, Notifier, SleepFlag
from guest.stack.session.ring import RingConsumer, RingGeometry, RingProducer
from guest.stack.session.shm import CACHE_LINE, fence, map_readonly, page_round

DRIVER: Final = "driver"
PROTOCOL: Final = "protocol"
ROLES: Final = (DRIVER, PROTOCOL)

_FLAGS: Final = 0
_TAIL: Final = CACHE_LINE
_RING: Final = 2 * CACHE_LINE

#: Room for a 64 KiB GSO/GRO super-frame, its Ethernet header and the virtio_net_hdr.
SUPER_FRAME: Final = 65536 + 128


@dataclass(frozen=True, slots=True)
class LinkGeometry:
    """`rx`: frames the driver received (driver -> protocol); `tx`: frames to send."""

    rx: RingGeometry
    tx: RingGeometry

    @classmethod
    def for_frames(cls, max_frame: int, rx_slots: int = 256, tx_slots: int = 128) -> LinkGeometry:
        """Slots big enough for the largest frame the device moves (`max_frame` bytes, virtio
        header included). Memfd pages are allocated when first touched, so 256 slots of 64 KiB
        cost what the traffic actually fills."""
        return cls(RingGeometry(rx_slots, max_frame), RingGeometry(tx_slots, max_frame))

    def region_size(self, role: str) -> int:
        ring = self.rx if role == DRIVER else self.tx
        return page_round(_RING + ring.producer_size)


def _sealed_memfd(name: str, size: int) -> int:
    """A zeroed memfd of `size` bytes that nobody can shrink or grow (a shrunk file would
    SIGBUS the peer on its next access)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _reopen_readonly(fd: int) -> int:
    """A new open file description of the same memfd, O_RDONLY: a mapping made through it can
    never become writable (no VM_MAYWRITE), whatever the holder calls afterwards."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


class FrameLink:
    """The shared memory and doorbells of one driver<->protocol link, made by the launcher.

    Fds are not inheritable across exec (CLOEXEC) but survive `fork`, which is how the
    domains get them. The launcher calls `close()` once both domains are forked.
    """

    def __init__(self, geometry: LinkGeometry) -> None:
        self.geometry = geometry
        self._rw: dict[str, int] = {}
        self._ro: dict[str, int] = {}
        self.bells: dict[str, int] = {}  # role -> the eventfd that wakes that role
        try:
            for role in ROLES:
                fd = _sealed_memfd(f"stackbed-{role}", geometry.region_size(role))
                self._rw[role] = fd
                self._ro[role] = _reopen_readonly(fd)
                self.bells[role] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        """Every fd the link holds (a forked domain closes the ones it must not keep)."""
        return [*self._rw.values(), *self._ro.values(), *self.bells.values()]

    def end(self, role: str) -> LinkEnd:
        """Map this process's end of the link as `role` and drop the region fds (the mappings
        stay). Call in the domain, after the fork."""
        if role not in ROLES:
            raise ValueError(f"unknown link role {role!r}")
        peer = PROTOCOL if role == DRIVER else DRIVER
        g = self.geometry
        own = mmap.mmap(self._rw[role], g.region_size(role), flags=mmap.MAP_SHARED)
        # Through libc and the read-only fd: no fd of the peer's region stays with us.
        other = map_readonly(self._ro[peer], g.region_size(peer))
        own_inode = os.fstat(self._rw[role]).st_ino
        for fds in (self._rw, self._ro):
            for fd in fds.values():
                os.close(fd)
            fds.clear()
        out_ring, in_ring = (g.rx, g.tx) if role == DRIVER else (g.tx, g.rx)
        bells, self.bells = self.bells, {}  # the end owns (and closes) the doorbells now
        return LinkEnd(
            role,
            own,
            own_inode,
            other,
            out_ring,
            in_ring,
            Doorbell(bells[role]),
            Doorbell(bells[peer]),
        )

    def close(self) -> None:
        """Close every fd this process still holds (the launcher, after forking)."""
        for fds in (self._rw, self._ro, self.bells):
            for fd in fds.values():
                os.close(fd)
            fds.clear()


class LinkEnd:
    """One domain's end: `out` (RingProducer) and `inbox` (RingConsumer), its own sleep flag and
    doorbell, and a notifier for the peer's.

    Sleeping: `prepare_to_sleep()` arms the flag and re-checks the inbox (Dekker, see
    `session.doorbell`); after a poll, `woke()` disarms and drains the bell. `kick()` publishes
    what was produced and rings the peer if it sleeps.
    """

    __slots__ = (
        "_flag_words",
        "_maps",
        "_peer_flags",
        "armed",
        "bell",
        "flag",
        "inbox",
        "notifier",
        "out",
        "own_inode",
        "peer_view",
        "role",
        "stats",
    )

    def __init__(
        self,
        role: str,
        own: mmap.mmap,
        own_inode: int,
        other: memoryview,
        out_ring: RingGeometry,
        in_ring: RingGeometry,
        bell: Doorbell,
        peer_bell: Doorbell,
    ) -> None:
        self.role = role
        self._maps = (own,)
        mine, theirs = memoryview(own), other
        self.peer_view = other  # read-only: writing raises TypeError
        self.own_inode = own_inode  # of our region's memfd (the isolation tests skip it)
        self.out = RingProducer(out_ring, mine[_RING:], theirs[_TAIL:_RING])
        self.inbox = RingConsumer(in_ring, theirs[_RING:], mine[_TAIL:_RING])
        self._flag_words = mine[_FLAGS : _FLAGS + 8].cast("Q")
        self._peer_flags = theirs[_FLAGS : _FLAGS + 8].cast("Q")
        self.flag = SleepFlag(self._flag_words, 0)
        self.stats = BellStats()
        self.notifier = Notifier(peer_bell, self._peer_flags, 0, self.stats)
        self.bell = bell
        self.armed = False

    def fileno(self) -> int:
        return self.bell.fd

    def prepare_to_sleep(self) -> bool:
        """Arm the flag for a sleep; False (disarmed again) if the inbox already holds frames,
        in which case the caller must not sleep."""
        self.flag.arm()
        fence()  # our flag (store) before re-reading the ring's head (load)
        if self.inbox.available():
            self.flag.disarm()
            self.stats.recheck_hits += 1
            return False
        self.armed = True
        self.stats.sleeps += 1
        return True

    def woke(self) -> None:
        """After a poll: stop asking for rings and clear the eventfd."""
        if self.armed:
            self.armed = False
            self.flag.disarm()
            fence()  # a notifier that saw our old epoch skipped its ring: see its frames
            self.bell.drain()

    def kick(self) -> None:
        """Publish every committed frame, and wake the peer if it sleeps."""
        self.out.publish()
        self.notifier.notify()

    def close(self) -> None:
        for ring in (self.out, self.inbox):
            ring.release_views()
        for view in (self._flag_words, self._peer_flags, self.peer_view):
            view.release()
        self.bell.close()
        self.notifier.bell.close()
        for mm in self._maps:
            with contextlib.suppress(BufferError):
                mm.close()  # else frame views are still exported: unmapped when they go

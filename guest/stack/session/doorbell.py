"""Doorbells: an eventfd to wake the other side, rung only when the other side sleeps.

A waiter spins briefly on its condition (data in a ring, space in a ring, a status word), then
announces that it is about to sleep by setting a flag in shared memory that it alone writes,
re-checks the condition, and only then blocks in poll() on its eventfd. The notifier, after
publishing whatever the waiter waits for, reads that flag and writes the eventfd only if it is
set. While both sides are busy no syscall is made per message; this is virtio's event
suppression (VRING_USED_F_NO_NOTIFY) applied to our rings.

No wakeup is lost because both sides follow store -> fence -> load (Dekker): the waiter stores
its flag then loads the condition, the notifier stores the condition (a ring index) then loads
the flag. With a full barrier between store and load on each side, at least one of them sees the
other's store: either the waiter sees the new data and does not sleep, or the notifier sees the
flag and rings. `shm.fence` is that barrier (x86-TSO alone would allow both loads to see the old
values: store buffers). As insurance against a bug in that reasoning, a sleep is cut into slices
(`SLICE`); a waiter that wakes from a slice *without* a ring and finds its condition true counts
a `rescued` wakeup, which the tests require to stay zero.

The flag is a *sleep epoch* rather than a boolean (`SleepFlag`): odd while its owner wants a
ring, and a new odd value for every new sleep. A notifier rings once per epoch: while a sleeper
is still waking up (tens of microseconds) the producer may publish many more messages, and a
boolean would cost a ring for each of them, all for one wakeup. Skipping is safe because the
first ring keeps the eventfd readable until the sleeper wakes, and after waking it clears its
flag, fences and re-checks its condition before anything else. The rule that makes it safe:
*whoever consumes a ring and still wants the next one arms a fresh epoch*. A ring can be stale
(rung for data the sleeper already took while it was busy); keeping the old epoch armed after
draining it would leave the notifier believing it had already rung, for ever. `Waiter` starts a
new epoch on every sleep; the session server re-arms after every bell it drains.

`always=True` on the notifier disables the suppression (a ring per notification), to measure
what it saves.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .shm import fence

#: Longest single sleep; bounds the damage of a lost wakeup to this much latency.
SLICE: Final = 0.5


def default_spin() -> float:
    """Seconds to spin before sleeping: a little on SMP, nothing on one CPU (spinning there only
    steals the CPU the peer needs to make the condition true)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 50e-6 if cpus > 1 else 0.0


@dataclass(slots=True)
class BellStats:
    rings: int = 0  # eventfd writes (syscalls) made by a notifier
    suppressed: int = 0  # notifications that needed no syscall: the peer was not asleep
    spin_hits: int = 0  # waits satisfied while spinning
    recheck_hits: int = 0  # waits satisfied by the re-check after setting the flag
    sleeps: int = 0  # times a waiter blocked in poll()
    spurious: int = 0  # woke by a ring, condition still false (a stale ring; harmless)
    rescued: int = 0  # woke by the slice timeout with the condition true: a lost wakeup
    timeouts: int = 0  # waits that ran out of time


class Doorbell:
    """A non-blocking eventfd. `ring` adds one; `drain` reads (and zeroes) the counter."""

    __slots__ = ("fd",)

    def __init__(self, fd: int | None = None) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if fd is None else fd

    def fileno(self) -> int:
        return self.fd

    def ring(self) -> None:
        try:  # noqa: SIM105 (hot path: contextlib.suppress costs more than the syscall's rest)
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # counter saturated: it is certainly readable already

    def drain(self) -> int:
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SleepFlag:
    """A word in shared memory that its owner alone writes: odd while the owner wants a ring
    (asleep, or armed for the next event), even otherwise, and a fresh odd value each time."""

    __slots__ = ("_value", "index", "words")

    def __init__(self, words: memoryview, index: int) -> None:
        self.words = words  # flag words (cast "Q"), writable
        self.index = index
        self._value = words[index] & ~1
        words[index] = self._value

    def arm(self) -> None:
        self._value += 2 if self._value & 1 else 1
        self.words[self.index] = self._value

    def disarm(self) -> None:
        if self._value & 1:
            self._value += 1
            self.words[self.index] = self._value

    @property
    def armed(self) -> bool:
        return bool(self._value & 1)


class Notifier:
    """The ringing side: `notify()` after publishing; rings once per sleep of the peer."""

    __slots__ = ("_rung", "always", "bell", "flags", "index", "stats")

    def __init__(
        self,
        bell: Doorbell,
        flags: memoryview,
        index: int,
        stats: BellStats | None = None,
        always: bool = False,
    ) -> None:
        self.bell = bell
        self.flags = flags  # the peer's flag words (cast "Q"), read-only to us is fine
        self.index = index
        self.stats = stats if stats is not None else BellStats()
        self.always = always
        self._rung = 0  # the peer's epoch we last rang for

    def notify(self) -> bool:
        """Wake the peer if it sleeps and was not rung for this sleep yet (or always, if so
        configured); True if we rang."""
        fence()  # our publication (store) before reading the flag (load)
        epoch = self.flags[self.index]
        if self.always or (epoch & 1 and epoch != self._rung):
            self._rung = epoch
            self.bell.ring()
            self.stats.rings += 1
            return True
        self.stats.suppressed += 1
        return False


class PeerGone(Exception):
    """The hang-up fd watched while waiting reported that the peer went away."""


class Waiter:
    """The sleeping side: `wait(cond, timeout)` spins, then flags, re-checks and polls.

    `hangup_fd` (optional) is polled for POLLRDHUP/POLLHUP only: a peer that dies never rings,
    so a waiter also watches the peer's control socket and raises `PeerGone` when it closes.
    """

    __slots__ = ("_hangup_fd", "_poll", "bell", "flag", "spin", "stats")

    def __init__(
        self,
        bell: Doorbell,
        flags: memoryview,
        index: int,
        stats: BellStats | None = None,
        spin: float | None = None,
        hangup_fd: int | None = None,
    ) -> None:
        self.bell = bell
        self.flag = SleepFlag(flags, index)  # in our own flag words (cast "Q", writable)
        self.stats = stats if stats is not None else BellStats()
        self.spin = default_spin() if spin is None else spin
        self._poll = select.poll()
        self._poll.register(bell.fd, select.POLLIN)
        self._hangup_fd = hangup_fd
        if hangup_fd is not None:
            self._poll.register(hangup_fd, select.POLLRDHUP)

    def wait(self, cond: Callable[[], bool], timeout: float | None) -> bool:
        """Block until `cond()` is true (True) or `timeout` seconds pass (False)."""
        if cond():
            return True
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if self.spin > 0:
            end = now + self.spin if deadline is None else min(deadline, now + self.spin)
            while time.monotonic() < end:
                if cond():
                    self.stats.spin_hits += 1
                    return True
                os.sched_yield()  # a peer runnable on our CPU gets to make `cond` true
        flag, stats = self.flag, self.stats
        while True:
            flag.arm()
            fence()  # our flag (store) before re-reading the condition (load)
            if cond():
                flag.disarm()
                stats.recheck_hits += 1
                return True
            if deadline is None:
                slice_ = SLICE
            else:
                slice_ = min(SLICE, deadline - time.monotonic())
                if slice_ <= 0:
                    flag.disarm()
                    stats.timeouts += 1
                    return False
            stats.sleeps += 1
            events = self._poll.poll(slice_ * 1000.0)
            flag.disarm()
            fence()  # a notifier that saw our old epoch skipped its ring: we must see its data
            rang = self.bell.drain() > 0
            if cond():
                if not rang:
                    stats.rescued += 1
                return True
            if rang:
                stats.spurious += 1
            if any(fd == self._hangup_fd and ev & ~select.POLLIN for fd, ev in events):
                raise PeerGone()

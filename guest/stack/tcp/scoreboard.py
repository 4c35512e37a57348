"""The sender's record of SACKed sequence ranges (RFC 2018 section 5; RFC 6675 section 3).

The connection uses it to avoid resending what the peer already holds: retransmissions are cut
at the next SACKed range, and after a timeout the go-back-N resend skips SACKed ranges (RFC 6675
section 5.1 keeps the scoreboard across an RTO). Sequence numbers are the connection's
unbounded integers.

The number of disjoint ranges is bounded (`MAX_RANGES`): loss recovery walks them on every
ACK, and a hostile receiver could otherwise report a 1-byte range at every other byte of the
window. An honest one reports one range per run of segments beyond a hole, far fewer. A block
that would add a range beyond the bound is ignored; SACK information is advisory (RFC 2018
section 8), so the sender then merely resends bytes the peer may already hold.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Final

#: Disjoint SACKed ranges kept at most (holes in one window, each a separate loss).
MAX_RANGES: Final = 256


class SackScoreboard:
    """Disjoint, sorted, merged ranges [start, end) above SND.UNA that the peer reported."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def ranges(self) -> list[tuple[int, int]]:
        """The SACKed ranges, lowest first."""
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def highest(self) -> int | None:
        """End of the highest SACKed range (RFC 6675 HighACK's counterpart)."""
        return self._ends[-1] if self._ends else None

    @property
    def sacked_bytes(self) -> int:
        """Total bytes covered."""
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def add(self, start: int, end: int, snd_una: int, snd_max: int) -> bool:
        """Record one block; ignore blocks outside (SND.UNA, SND.MAX] (RFC 2018 section 8,
        e.g. D-SACKs of RFC 2883). Return whether the block was used."""
        if start < snd_una:
            start = snd_una
        if end > snd_max or start >= end:
            return False
        starts = self._starts
        ends = self._ends
        i = bisect_right(ends, start - 1)  # first range that ends at or after `start`
        j = i
        while j < len(starts) and starts[j] <= end:
            start = min(start, starts[j])
            end = max(end, ends[j])
            j += 1
        if j == i and len(starts) >= MAX_RANGES:
            return False  # a new disjoint range beyond the bound
        starts[i:j] = [start]
        ends[i:j] = [end]
        return True

    def prune(self, snd_una: int) -> None:
        """Forget what the cumulative ACK now covers."""
        starts = self._starts
        ends = self._ends
        i = 0
        while i < len(ends) and ends[i] <= snd_una:
            i += 1
        if i:
            del starts[:i]
            del ends[:i]
        if starts and starts[0] < snd_una:
            starts[0] = snd_una

    def sacked_end_at(self, seq: int) -> int | None:
        """If `seq` lies inside a SACKed range, the end of that range."""
        i = bisect_right(self._starts, seq) - 1
        if i >= 0 and seq < self._ends[i]:
            return self._ends[i]
        return None

    def next_sacked_start(self, seq: int) -> int | None:
        """Start of the first SACKed range beginning after `seq` (where a hole ends)."""
        i = bisect_right(self._starts, seq)
        return self._starts[i] if i < len(self._starts) else None

    def sacked_between(self, start: int, end: int) -> int:
        """SACKed bytes within [start, end)."""
        total = 0
        for s, e in zip(self._starts, self._ends, strict=True):
            if e <= start:
                continue
            if s >= end:
                break
            total += min(e, end) - max(s, start)
        return total

    def lost_boundary(self, mss: int, dup_thresh: int = 3) -> int | None:
        """The sequence number below which every un-SACKed byte counts as lost.

        RFC 6675 section 4 IsLost(): a byte is lost once more than (DupThresh - 1) * SMSS
        bytes above it were SACKed, or DupThresh discontiguous ranges above it were. The
        boundary is the start of the lowest range that completes either count, counting
        from the top; None while nothing qualifies.
        """
        acc = 0
        for count, i in enumerate(range(len(self._starts) - 1, -1, -1), start=1):
            acc += self._ends[i] - self._starts[i]
            if acc > (dup_thresh - 1) * mss or count >= dup_thresh:
                return self._starts[i]
        return None

    def clear(self) -> None:
        """Forget everything."""
        self._starts.clear()
        self._ends.clear()

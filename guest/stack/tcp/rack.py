"""RACK-TLP loss detection (RFC 8985): losses found by time, not by counting duplicates.

RFC 6675's rules find a loss once enough data above it was SACKed; they cannot see a lost
retransmission (nothing above it is newer), nor a loss in the last segments of a burst
(nothing comes after it to be SACKed). Both then wait for the retransmission timer, at least
200 ms, and restart from one segment: on a lossy link that is where a transfer's time goes.
RACK instead remembers when each segment was last sent; a segment is lost once a segment sent
after it was delivered and more than a reordering window has passed. The tail loss probe (TLP)
makes an ACK happen when none would come, so RACK gets to look.

This module holds the per-segment record (`SentLog`), RACK's state and its two steps, update and
detect (RFC 8985 section 6.2), and the probe timeout's arithmetic (section 7.2). It sends
nothing: the connection asks it which segments are lost and when to look again. Sequence
numbers are the connection's unbounded integers; times are the connection's `now`.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

#: RFC 8985 section 6.2: DupThresh, used only to decide whether to wait a reordering window.
DUP_THRESH = 3
#: RFC 8985 section 7.2: WCDelAckT, the worst-case delayed ACK a probe of one segment waits for.
WORST_CASE_DELAYED_ACK = 0.200
#: The shortest probe timeout: Linux's former floor (10 ms). On a link of a fraction of a
#: millisecond, 2*SRTT is shorter than a user-level stack's scheduling jitter and probes would
#: go when nothing was lost.
MIN_PROBE_TIMEOUT = 0.010


@dataclass(slots=True)
class SentSegment:
    """One transmitted range of sequence space and what is known of it."""

    start: int
    end: int  # exclusive; a FIN counts as one octet
    xmit_time: float  # of the most recent (re)transmission
    xmit_tsval: int  # the TSval it carried (for RACK's retransmission ambiguity check)
    retransmitted: bool = False
    sacked: bool = False
    lost: bool = False  # marked lost and not retransmitted since


def sent_after(t1: float, end1: int, t2: float, end2: int) -> bool:
    """RFC 8985 RACK_sent_after: was (t1, end1) sent after (t2, end2)? Equal times (segments
    of one burst) are ordered by sequence."""
    return t1 > t2 or (t1 == t2 and end1 > end2)


class SentLog:
    """Every unacknowledged segment in sequence order (the retransmission queue's metadata).

    A retransmission may cover part of a segment (a hole clipped by SACKed data, or an MSS of a
    TSO super-segment); the record is then split so each piece keeps its own history.
    """

    __slots__ = ("maybe_lost", "segments")

    def __init__(self) -> None:
        self.segments: list[SentSegment] = []
        #: False when no record is marked lost (True: some may be). Every poll of a sending
        #: connection asks for the first lost record, and scanning the whole flight for it
        #: each time made a full window cost one pass over the log per segment sent.
        self.maybe_lost = False

    def __len__(self) -> int:
        return len(self.segments)

    def on_send(self, start: int, end: int, snd_max: int, now: float, tsval: int) -> None:
        """Record a transmission of [start, end); what lies below `snd_max` is a resend."""
        if start < snd_max:
            self._resent(start, min(end, snd_max), now, tsval)
        if end > snd_max:
            self.segments.append(SentSegment(max(start, snd_max), end, now, tsval))

    def _resent(self, start: int, end: int, now: float, tsval: int) -> None:
        segs = self.segments
        i = self._split(start)
        self._split(end)
        while i < len(segs) and segs[i].start < end:
            seg = segs[i]
            seg.xmit_time = now
            seg.xmit_tsval = tsval
            seg.retransmitted = True
            seg.lost = False
            i += 1

    def _split(self, seq: int) -> int:
        """Make `seq` a record boundary; the index of the record starting there (or after)."""
        segs = self.segments
        i = bisect_right(segs, seq, key=_start) - 1
        if i < 0:
            return 0
        seg = segs[i]
        if seg.start == seq:
            return i
        if seq >= seg.end:
            return i + 1
        tail = SentSegment(
            seq, seg.end, seg.xmit_time, seg.xmit_tsval, seg.retransmitted, seg.sacked, seg.lost
        )
        seg.end = seq
        segs.insert(i + 1, tail)
        return i + 1

    def acked(self, una: int) -> list[SentSegment]:
        """Remove and return the records the cumulative ACK `una` covers whole."""
        segs = self.segments
        k = 0
        while k < len(segs) and segs[k].end <= una:
            k += 1
        done = segs[:k]
        del segs[:k]
        if segs and segs[0].start < una:
            segs[0].start = una  # an ACK inside a record: the rest stays outstanding
        return done

    def sacked(self, start: int, end: int) -> list[SentSegment]:
        """Mark the records wholly inside the SACKed range [start, end); the newly marked."""
        segs = self.segments
        out: list[SentSegment] = []
        i = bisect_right(segs, start - 1, key=_start)
        while i < len(segs) and segs[i].end <= end:
            seg = segs[i]
            if not seg.sacked and seg.start >= start:
                seg.sacked = True
                seg.lost = False
                out.append(seg)
            i += 1
        return out

    def lost_bytes(self, below: int) -> int:
        """Octets below `below` marked lost and not yet resent (RFC 6675 pipe's "lost" term)."""
        if not self.maybe_lost:
            return 0
        return sum(min(s.end, below) - s.start for s in self.segments if s.lost and s.start < below)

    def first_lost(self) -> SentSegment | None:
        """The lowest record marked lost: the next to resend."""
        if not self.maybe_lost:
            return None
        for seg in self.segments:
            if seg.lost:
                return seg
        self.maybe_lost = False
        return None

    def forget_losses(self) -> None:
        """After a timeout everything is resent from SND.UNA anyway."""
        for seg in self.segments:
            seg.lost = False
        self.maybe_lost = False


def _start(seg: SentSegment) -> int:
    return seg.start


class Rack:
    """RACK's state (RFC 8985 section 6.1): the most recently sent segment known delivered."""

    __slots__ = ("end_seq", "fack", "min_rtt", "reordering_seen", "rtt", "xmit_time")

    def __init__(self) -> None:
        self.xmit_time = float("-inf")
        self.end_seq = 0
        self.rtt = 0.0
        self.min_rtt: float | None = None
        #: Highest end of any delivered segment (RACK.fack).
        self.fack = 0
        self.reordering_seen = False

    def update(self, seg: SentSegment, now: float, tsecr: int | None) -> None:
        """RFC 8985 section 6.2 step 2: a segment was delivered (cumulatively or SACKed)."""
        rtt = now - seg.xmit_time
        if seg.retransmitted:
            # Was it the retransmission that arrived? Not if the echo predates it, or if the
            # answer came faster than any round trip can (the original arrived late).
            if tsecr is not None and _ts_before(tsecr, seg.xmit_tsval):
                return
            if self.min_rtt is not None and rtt < self.min_rtt:
                return
        else:
            if self.min_rtt is None or rtt < self.min_rtt:
                self.min_rtt = rtt
            # Step 3: delivered below something already delivered, never resent: reordering.
            if seg.end < self.fack:
                self.reordering_seen = True
        if seg.end > self.fack:
            self.fack = seg.end
        self.rtt = rtt
        if sent_after(seg.xmit_time, seg.end, self.xmit_time, self.end_seq):
            self.xmit_time = seg.xmit_time
            self.end_seq = seg.end

    def reo_wnd(self, in_recovery: bool, sacked_bytes: int, mss: int, srtt: float) -> float:
        """RFC 8985 section 6.2 step 4: how long reordering may delay a segment.

        None while nothing suggests reordering and the losses are plain (in recovery, or
        DupThresh segments' worth SACKed); else a quarter of the minimum RTT, at most SRTT.
        The RFC's D-SACK adaptation of the multiplier is not done: the window stays at 1/4.
        """
        if not self.reordering_seen and (in_recovery or sacked_bytes > (DUP_THRESH - 1) * mss):
            return 0.0
        quarter = (self.min_rtt or 0.0) / 4
        return min(quarter, srtt)

    def detect(self, log: SentLog, now: float, reo_wnd: float) -> tuple[int, float | None]:
        """RFC 8985 section 6.2 step 5: mark lost every outstanding segment sent before the
        last delivered one by more than the reordering window. Returns how many were newly
        marked, and when to look again for those still within the window (None: nothing
        waits)."""
        newly = 0
        wait: float | None = None
        rack_time, rack_end = self.xmit_time, self.end_seq
        budget = self.rtt + reo_wnd
        for seg in log.segments:
            if seg.sacked or seg.lost:
                continue
            if not sent_after(rack_time, rack_end, seg.xmit_time, seg.end):
                continue
            remaining = seg.xmit_time + budget - now
            if remaining <= 0:
                seg.lost = True
                log.maybe_lost = True
                newly += 1
            elif wait is None or remaining > wait:
                wait = remaining
        return newly, None if wait is None else now + wait


def _ts_before(a: int, b: int) -> bool:
    """TSval comparison mod 2**32 (RFC 7323 section 5.2)."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


def probe_timeout(srtt: float | None, flight_segments: int, rto_left: float | None) -> float:
    """RFC 8985 section 7.2: when to send a tail loss probe, from now.

    Two SRTTs, at least `MIN_PROBE_TIMEOUT`; with one segment in flight, add the worst-case
    delayed ACK (the receiver may hold its only ACK that long); never later than the
    retransmission timer would fire.
    """
    pto = max(2 * srtt, MIN_PROBE_TIMEOUT) if srtt is not None else 1.0
    if flight_segments <= 1:
        pto += WORST_CASE_DELAYED_ACK
    if rto_left is not None and rto_left < pto:
        pto = rto_left
    return pto

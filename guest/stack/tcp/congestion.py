"""Congestion control: RFC 5681 slow start / congestion avoidance with RFC 6582 NewReno recovery.

The controller only does window arithmetic; it never builds segments. It answers the
connection's questions with `CcAction` flags ("retransmit the head now", "do not restart the
retransmission timer"), so the connection keeps sole ownership of what is on the wire.

Sequence numbers handed in are the connection's unbounded integers (see `seq.unwrap`), so plain
comparisons are correct here.
"""

from __future__ import annotations

from enum import IntFlag

#: RFC 5681 section 3.2: fast retransmit after the third duplicate ACK.
DUP_THRESH = 3
#: "Arbitrarily high" initial ssthresh (RFC 5681 section 3.1).
_INFINITE_SSTHRESH = 1 << 62


class CcAction(IntFlag):
    """What the connection must do after feeding an ACK to the controller."""

    NONE = 0
    #: Retransmit the first unacknowledged segment now (fast retransmit or partial ACK).
    RETRANSMIT_HEAD = 1
    #: Leave the retransmission timer alone although new data was acknowledged (RFC 6582
    #: section 3.2 step 5: only the first partial ACK re-arms it, the "Impatient" variant).
    KEEP_TIMER = 2


def initial_window(mss: int, segments: int) -> int:
    """Initial cwnd in bytes.

    RFC 6928 section 2: IW = min(10*MSS, max(2*MSS, 14600)); generalised here to `segments`
    as min(n*MSS, max(2*MSS, n*1460)) so that IW10 gives exactly the RFC formula.
    """
    return min(segments * mss, max(2 * mss, segments * 1460))


class NewReno:
    """cwnd, ssthresh and the NewReno fast-recovery state of one connection."""

    def __init__(self, mss: int, initial_segments: int, iss: int) -> None:
        self.mss = mss
        self.iw = initial_window(mss, initial_segments)
        self.cwnd = self.iw
        self.ssthresh = _INFINITE_SSTHRESH
        # RFC 6582 section 3.2 step 1: recover starts at the initial send sequence number and
        # holds the highest sequence number transmitted when recovery last started.
        self.recover = iss
        self.in_recovery = False
        #: The current recovery is SACK-based (RFC 6675): no window inflation or deflation,
        #: the connection paces retransmissions with its `pipe` estimate instead.
        self.sack_mode = False
        self.dup_acks = 0
        self.fast_retransmits = 0
        self._partial_seen = False
        self._ca_bytes = 0

    name = "newreno"

    def on_new_ack(
        self, ack: int, acked: int, snd_max: int, now: float = 0.0, rtt: float | None = None
    ) -> CcAction:
        """An ACK advanced SND.UNA by `acked` bytes to `ack` at time `now`; `rtt` is the
        smoothed round-trip time if known (controllers whose growth follows time use both)."""
        self.dup_acks = 0
        mss = self.mss
        if self.in_recovery:
            if ack > self.recover:
                if self.sack_mode:
                    # RFC 6582 step 3 (full ACK), option 2: cwnd = ssthresh, as Linux ends
                    # a recovery (tcp_end_cwnd_reduction). PRR has brought the flight to
                    # ssthresh already, so there is no burst to fear; option 1 would shrink
                    # the window again after every loss the flight happened to drain past.
                    self.cwnd = self.ssthresh
                else:
                    # Option 1: cwnd = min(ssthresh, FlightSize + SMSS), so that a pipe that
                    # NewReno's one-hole-per-RTT recovery drained does not cause a burst.
                    flight = snd_max - ack
                    self.cwnd = min(self.ssthresh, max(flight, mss) + mss)
                self.in_recovery = False
                self.sack_mode = False
                self._ca_bytes = 0
                return CcAction.NONE
            if self.sack_mode:
                return CcAction.NONE  # RFC 6675: the scoreboard chooses what to resend
            # RFC 6582 step 5 (partial ACK): retransmit the next hole, deflate by the amount
            # acknowledged, add back one SMSS if at least that much was acknowledged.
            self.cwnd = max(self.cwnd - acked, mss)
            if acked >= mss:
                self.cwnd += mss
            action = CcAction.RETRANSMIT_HEAD
            if self._partial_seen:
                action |= CcAction.KEEP_TIMER
            self._partial_seen = True
            return action
        if self.cwnd < self.ssthresh:
            # RFC 5681 section 3.1 equation (2): cwnd += min(N, SMSS).
            self.cwnd += min(acked, mss)
        else:
            self._grow_in_avoidance(acked, now, rtt)
        return CcAction.NONE

    def _grow_in_avoidance(self, acked: int, now: float, rtt: float | None) -> None:
        """Congestion avoidance: one SMSS per cwnd of acknowledged bytes (the byte-counting
        form RFC 5681 section 3.1 allows instead of equation (3))."""
        self._ca_bytes += acked
        if self._ca_bytes >= self.cwnd:
            self._ca_bytes -= self.cwnd
            self.cwnd += self.mss

    def _ssthresh_after_loss(self, flight: int) -> int:
        """The slow-start threshold after a congestion event: RFC 5681 equation (4)."""
        return max(flight // 2, 2 * self.mss)

    def on_dup_ack(self, ack: int, flight: int, snd_max: int) -> CcAction:
        """A duplicate ACK (RFC 5681 section 2 definition) arrived."""
        if self.in_recovery:
            # RFC 6582 step 4: each further duplicate inflates cwnd by one SMSS (SACK-based
            # recovery accounts for the departed segment in `pipe` instead).
            if not self.sack_mode:
                self.cwnd += self.mss
            return CcAction.NONE
        self.dup_acks += 1
        if self.dup_acks != DUP_THRESH:
            return CcAction.NONE
        if ack <= self.recover:
            # RFC 6582 step 2: the ACK does not cover `recover`, so these duplicates may stem
            # from retransmissions of the previous episode: do not enter fast retransmit.
            return CcAction.NONE
        # RFC 5681 equation (4) and RFC 6582 step 2.
        self.ssthresh = self._ssthresh_after_loss(flight)
        self.recover = snd_max - 1
        self.cwnd = self.ssthresh + DUP_THRESH * self.mss
        self.in_recovery = True
        self.sack_mode = False
        self._partial_seen = False
        self.fast_retransmits += 1
        return CcAction.RETRANSMIT_HEAD

    def enter_sack_recovery(self, flight: int, snd_max: int) -> None:
        """Start (or convert the just-started recovery into) RFC 6675 loss recovery.

        Section 5 step (4.2): ssthresh = cwnd = max(FlightSize / 2, 2 * SMSS) (RFC 5681
        equation (4)); RecoveryPoint = HighData.
        """
        if not self.in_recovery:
            self.ssthresh = self._ssthresh_after_loss(flight)
            self.recover = snd_max - 1
            self.in_recovery = True
            self._partial_seen = False
            self.fast_retransmits += 1
        self.sack_mode = True
        self.dup_acks = 0
        self.cwnd = self.ssthresh

    def on_loss_repaired(self) -> None:
        """A tail loss probe repaired a loss by itself (RFC 8985 section 7.4.2): reduce the
        window as a fast recovery would have, without entering one."""
        self.ssthresh = self._ssthresh_after_loss(self.cwnd)
        self.cwnd = self.ssthresh
        self._ca_bytes = 0

    def on_timeout(self, flight: int, snd_max: int, first: bool) -> None:
        """The retransmission timer expired (RFC 5681 section 3.1, RFC 6582 section 4)."""
        if first:
            # Equation (4); on repeated timeouts of the same segment ssthresh stays put.
            self.ssthresh = self._ssthresh_after_loss(flight)
        self.cwnd = self.mss  # loss window LW = 1 SMSS
        self.in_recovery = False
        self.sack_mode = False
        self.dup_acks = 0
        self._ca_bytes = 0
        self.recover = snd_max - 1

    def on_idle_restart(self) -> None:
        """RFC 5681 section 4.1: after an idle RTO, restart from RW = min(IW, cwnd)."""
        self.cwnd = min(self.cwnd, self.iw)

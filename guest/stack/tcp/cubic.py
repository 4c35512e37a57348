"""CUBIC congestion control (RFC 9438), Linux's default, beside NewReno.

Only the window's growth in congestion avoidance and its reduction on a congestion event
differ from NewReno; slow start, fast recovery and the recovery bookkeeping are NewReno's
(`congestion.NewReno`), as in Linux, where CUBIC is a `tcp_congestion_ops` module under the
same recovery machinery. Growth follows time since the last reduction, not ACK count, so on a
path with a long round trip the window comes back to where the loss happened in K seconds
whatever the RTT, and stays flat near it (the concave part) before probing beyond (convex).

Windows in the RFC's formulas are in segments; the connection's cwnd is in bytes.
"""

from __future__ import annotations

from .congestion import NewReno

#: RFC 9438 section 5: C = 0.4, beta_cubic = 0.7.
C = 0.4
BETA = 0.7
#: RFC 9438 section 4.3: alpha_cubic, so that the Reno-friendly estimate grows like Reno
#: with the same average window despite the smaller reduction.
ALPHA = 3 * (1 - BETA) / (1 + BETA)


class Cubic(NewReno):
    """NewReno's recovery with RFC 9438's window: reductions by beta, cubic growth."""

    name = "cubic"

    def __init__(self, mss: int, initial_segments: int, iss: int) -> None:
        super().__init__(mss, initial_segments, iss)
        self.w_max = 0.0  # segments, the window when the last congestion event happened
        self.k = 0.0  # seconds from the epoch's start until the window is back at w_max
        self.epoch: float | None = None  # start of the current avoidance epoch
        self.w_est = 0.0  # segments, the Reno-friendly estimate (section 4.3)

    def _ssthresh_after_loss(self, flight: int) -> int:
        """Section 4.6: remember W_max (lowered further when the window did not come back
        to the last one: fast convergence, section 4.7), reduce to beta * cwnd."""
        segments = self.cwnd / self.mss
        self.w_max = segments * (1 + BETA) / 2 if segments < self.w_max else segments
        self.epoch = None
        return max(int(self.cwnd * BETA), 2 * self.mss)

    def window_at(self, t: float) -> float:
        """Equation (1): W_cubic(t) in segments, t seconds into the epoch."""
        return C * (t - self.k) ** 3 + self.w_max

    def _grow_in_avoidance(self, acked: int, now: float, rtt: float | None) -> None:
        mss = self.mss
        cwnd = self.cwnd / mss
        if self.epoch is None:
            # Section 4.2: a new epoch starts with the first ACK in congestion avoidance.
            self.epoch = now
            if cwnd < self.w_max:
                self.k = ((self.w_max - cwnd) / C) ** (1 / 3)  # equation (2)
            else:
                self.k = 0.0
                self.w_max = cwnd
            self.w_est = cwnd
        t = now - self.epoch
        # Section 4.3: the Reno-friendly region grows W_est by alpha per window acknowledged.
        self.w_est += ALPHA * (acked / mss) / cwnd
        if self.window_at(t) < self.w_est:
            grown = self.w_est
        else:
            # Section 4.4/4.5: aim at W_cubic one RTT ahead, between cwnd and 1.5 cwnd, and
            # close (target - cwnd) / cwnd of the gap per segment acknowledged.
            target = self.window_at(t + (rtt or 0.0))
            target = min(max(target, cwnd), 1.5 * cwnd)
            grown = cwnd + (target - cwnd) / cwnd * (acked / mss)
        new = int(grown * mss)
        if new > self.cwnd:
            self.cwnd = new

    def on_timeout(self, flight: int, snd_max: int, first: bool) -> None:
        """Section 4.8: after a timeout the window restarts from one segment in slow start;
        the next avoidance epoch begins afresh."""
        if first:
            self.ssthresh = self._ssthresh_after_loss(self.cwnd)
        super().on_timeout(flight, snd_max, first=False)
        self.epoch = None

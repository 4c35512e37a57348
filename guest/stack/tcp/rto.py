"""Retransmission timeout estimation (RFC 6298).

Kept apart from the connection so the arithmetic can be tested against the RFC's formulas
without building segments. The estimator knows nothing about Karn's algorithm: the connection
decides which samples are valid (RFC 6298 section 3) and only feeds those.
"""

from __future__ import annotations

#: RFC 6298 section 2: alpha = 1/8, beta = 1/4, K = 4.
ALPHA = 0.125
BETA = 0.25
K = 4
#: Cap on the backoff exponent; beyond it max_rto is reached anyway and 2**n stays small.
_MAX_BACKOFF = 30


class RtoEstimator:
    """SRTT, RTTVAR and the (backed-off) RTO of one connection."""

    def __init__(
        self, initial_rto: float, min_rto: float, max_rto: float, granularity: float
    ) -> None:
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.samples = 0
        self._base = initial_rto  # RFC 6298 section 2.1: 1 s until the first measurement
        self.backoff = 0

    @property
    def rto(self) -> float:
        """Current timeout: the computed RTO doubled once per unanswered expiry (section 5.5)."""
        return min(self._base * (1 << self.backoff), self.max_rto)

    @property
    def base_rto(self) -> float:
        """The RTO without backoff (what the next new ACK falls back to)."""
        return self._base

    def on_sample(self, r: float) -> None:
        """Fold in one valid round-trip measurement (RFC 6298 sections 2.2 and 2.3)."""
        if r < 0:
            return
        if self.srtt is None or self.rttvar is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            # Section 2.3: RTTVAR is updated with the old SRTT, then SRTT.
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - r)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * r
        self.samples += 1
        rto = self.srtt + max(self.granularity, K * self.rttvar)
        # Section 2.4 (lower bound, configurable) and 2.5 (upper bound).
        self._base = min(max(rto, self.min_rto), self.max_rto)
        # Karn (section 5, note after 5.7): a fresh sample ends the backoff.
        self.backoff = 0

    def on_timeout(self) -> None:
        """Back the timer off after an expiry (RFC 6298 section 5.5)."""
        if self.backoff < _MAX_BACKOFF and self.rto < self.max_rto:
            self.backoff += 1

    def reset_backoff(self) -> None:
        """Drop the backoff when new data is acknowledged (as Linux does on forward progress)."""
        self.backoff = 0

    def set_base(self, rto: float) -> None:
        """Force the un-backed-off RTO, e.g. to 3 s after a lost SYN (RFC 6298 section 5.7)."""
        self._base = min(max(rto, self.min_rto), self.max_rto)

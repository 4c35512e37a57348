"""A token bucket: how the stack bounds what it sends in answer to what anyone may send it.

ICMP errors (Linux's icmp_msgs_per_sec) and the RSTs that answer segments matching no
connection are both replies a flood of spoofed packets could otherwise turn into a flood of
ours. Time comes from the caller, like everywhere in the protocol code.
"""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved; time comes from the caller."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

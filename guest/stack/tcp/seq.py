"""Sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4).

Every comparison of two wire sequence numbers must wrap: a bare `<` is a latent bug that only
shows after 4 GiB have crossed a connection. The state machine avoids the problem differently:
it *unwraps* each 32-bit number on arrival into an unbounded Python int next to a reference it
already holds (`unwrap`), works with plain integer comparisons, and wraps again (`wrap`) only when
it builds a segment. The helpers here are the only places where the modular rules live.

Comparisons follow RFC 1982-style serial arithmetic: `a < b` when `b - a` taken modulo 2**32
lies in (0, 2**31). Numbers exactly 2**31 apart are ambiguous; TCP never needs to compare them
because windows are limited to 2**30 (RFC 7323 section 2.3).
"""

from __future__ import annotations

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
_HALF = 1 << 31


def wrap(value: int) -> int:
    """Map an unbounded sequence number (or any int) onto the 32-bit wire value."""
    return value & SEQ_MASK


def seq_add(a: int, n: int) -> int:
    """`a + n` modulo 2**32."""
    return (a + n) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance `a - b` in the range [-2**31, 2**31)."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= _HALF else d


def seq_lt(a: int, b: int) -> bool:
    """`a` precedes `b` in sequence space."""
    return ((a - b) & SEQ_MASK) >= _HALF


def seq_le(a: int, b: int) -> bool:
    """`a` precedes or equals `b` in sequence space."""
    return a == b or ((a - b) & SEQ_MASK) >= _HALF


def seq_gt(a: int, b: int) -> bool:
    """`a` follows `b` in sequence space."""
    return ((b - a) & SEQ_MASK) >= _HALF


def seq_ge(a: int, b: int) -> bool:
    """`a` follows or equals `b` in sequence space."""
    return a == b or ((b - a) & SEQ_MASK) >= _HALF


def seq_max(a: int, b: int) -> int:
    """The later of two sequence numbers."""
    return b if seq_lt(a, b) else a


def seq_min(a: int, b: int) -> int:
    """The earlier of two sequence numbers."""
    return a if seq_lt(a, b) else b


def seq_in_window(x: int, start: int, length: int) -> bool:
    """`start <= x < start + length` in sequence space (the RFC 9293 section 3.4 window test)."""
    return ((x - start) & SEQ_MASK) < length


def unwrap(value: int, reference: int) -> int:
    """The unbounded integer congruent to the 32-bit `value` that lies closest to `reference`.

    `reference` is an unbounded number the caller already trusts (RCV.NXT for incoming sequence
    numbers, SND.UNA for acknowledgment numbers). Segments that are far away land far away, so
    the ordinary window tests reject them exactly as the modular tests would.
    """
    return reference + seq_diff(value, reference & SEQ_MASK)

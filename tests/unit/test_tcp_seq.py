"""Sequence-number arithmetic modulo 2**32."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from guest.stack.tcp.seq import (
    SEQ_MASK,
    seq_add,
    seq_diff,
    seq_ge,
    seq_gt,
    seq_in_window,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
    unwrap,
    wrap,
)

u32 = st.integers(0, SEQ_MASK)
dist = st.integers(-(2**31) + 1, 2**31 - 1)


def test_comparisons_across_the_wrap() -> None:
    assert seq_lt(0xFFFFFFF0, 0x10)
    assert seq_gt(0x10, 0xFFFFFFF0)
    assert seq_le(5, 5) and seq_ge(5, 5)
    assert not seq_lt(5, 5) and not seq_gt(5, 5)
    assert seq_max(0xFFFFFFFF, 1) == 1
    assert seq_min(0xFFFFFFFF, 1) == 0xFFFFFFFF


def test_add_and_diff_wrap() -> None:
    assert seq_add(0xFFFFFFFF, 2) == 1
    assert seq_diff(1, 0xFFFFFFFF) == 2
    assert seq_diff(0xFFFFFFFF, 1) == -2
    assert wrap(2**32 + 7) == 7


def test_window_test_wraps() -> None:
    assert seq_in_window(0x5, 0xFFFFFFF0, 0x20)
    assert not seq_in_window(0x10, 0xFFFFFFF0, 0x20)
    assert not seq_in_window(0xFFFFFFEF, 0xFFFFFFF0, 0x20)
    assert not seq_in_window(7, 7, 0)


@given(u32, dist)
def test_order_matches_signed_distance(a: int, d: int) -> None:
    b = seq_add(a, d)
    assert seq_lt(a, b) == (d > 0)
    assert seq_gt(a, b) == (d < 0)
    assert seq_diff(b, a) == d


@given(st.integers(0, 2**40), dist)
def test_unwrap_recovers_nearby_values(reference: int, d: int) -> None:
    value = reference + d
    assert unwrap(wrap(value), reference) == value


@given(u32, u32)
def test_lt_is_antisymmetric(a: int, b: int) -> None:
    assert not (seq_lt(a, b) and seq_lt(b, a)) or (a - b) & SEQ_MASK == 2**31

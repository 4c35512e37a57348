"""The Internet checksum (RFC 1071) and its TCP/UDP pseudo-header (RFC 9293 3.1, RFC 768).

Method: read the buffer as big-endian integers with `int.from_bytes` and reduce modulo 0xFFFF.
Because 2**16 == 1 (mod 0xFFFF), an N-byte string read as a number is congruent to the plain
sum of its 16-bit words, which is what the end-around-carry fold computes (RFC 1071 2(B)).
Both steps run in C, so no Python code runs per word. The reduction (a hardware division per
30-bit bignum digit) costs ~2.5x the conversion, so buffers of 640 bytes and more are converted
in even-sized chunks that are *added* (cheap) and reduced once at the end.
Measured on CPython 3.11 (x86-64), 1460/1480 bytes:
  chunked int.from_bytes, one % 0xFFFF   ~2.4-2.9 us (~510-600 MB/s; ~1.1 GB/s on 64 KiB)
  int.from_bytes + % 0xFFFF, one piece   ~3.4 us  (~430 MB/s; ~475 MB/s on 64 KiB)
  array('H') + sum (+ byteswap)          ~6-7.5 us (~200-240 MB/s)
  memoryview.cast('H') + sum             ~6.9 us
  struct.unpack('!730H') + sum           ~7.5 us
  per-word Python loop                   ~40 us   (~36 MB/s)
For 20-byte headers the single conversion wins too (0.16 us against 0.4 us for array/struct).

Partial sums are plain non-negative ints ("raw sums"): raw sums of pieces that start at even
offsets add with `+`, and `fold()` reduces any such int to the 16-bit one's-complement sum.
`Checksum` handles chains of arbitrary, possibly odd-length pieces by tracking byte parity.
"""

from __future__ import annotations

from ._buf import BytesLike, as_view

_from_bytes = int.from_bytes

#: Below this many bytes one conversion + one reduction is fastest (measured crossover).
_CHUNKED_MIN: int = 640


def fold(total: int) -> int:
    """Reduce a non-negative raw sum to the 16-bit one's-complement sum.

    The result is in 0..0xFFFF and is 0 only for a sum of all-zero words, exactly as the
    end-around-carry fold yields (a non-zero multiple of 0xFFFF folds to 0xFFFF, "negative
    zero", not 0).
    """
    r = total % 0xFFFF
    if r == 0 and total:
        return 0xFFFF
    return r


def raw_sum(data: BytesLike) -> int:
    """Unfolded sum of `data` (zero-padded to even length); add these, then `fold()`.

    The value is congruent mod 0xFFFF to the sum of the 16-bit words and is zero only when
    every byte is, which is all `fold()` needs.
    """
    n = len(data)
    if n < _CHUNKED_MIN:
        if n & 1:
            return _from_bytes(data, "big") << 8
        return _from_bytes(data, "big")
    view = as_view(data)
    n = len(view)
    # Chunk size: measured best is ~n/8, between 256 and 4096 bytes; even so that every chunk
    # starts on a word boundary.
    chunk = min(max(256, (n >> 3) & ~1), 4096)
    total = 0
    i = 0
    last = n - chunk
    while i < last:
        total += _from_bytes(view[i : i + chunk], "big")
        i += chunk
    tail = _from_bytes(view[i:], "big")
    if (n - i) & 1:
        tail <<= 8
    return total + tail


def ones_sum(data: BytesLike, initial: int = 0) -> int:
    """16-bit one's-complement sum of `data` plus a partial sum `initial`."""
    n = len(data)
    if n < _CHUNKED_MIN:  # inlined raw_sum + fold: this path runs for every IPv4 header
        total = initial + (_from_bytes(data, "big") << 8 if n & 1 else _from_bytes(data, "big"))
    else:
        total = initial + raw_sum(data)
    r = total % 0xFFFF
    if r == 0 and total:
        return 0xFFFF
    return r


def checksum(data: BytesLike, initial: int = 0) -> int:
    """The Internet checksum to store in a header: complement of the one's-complement sum.

    `initial` is a partial sum of data covered but not contiguous with `data` (the
    pseudo-header); the checksum field inside `data` must be zero when computing.
    """
    return ~ones_sum(data, initial) & 0xFFFF


def verify(data: BytesLike, initial: int = 0) -> bool:
    """True when `data` (checksum field included) plus `initial` sums to 0xFFFF."""
    return ones_sum(data, initial) == 0xFFFF


def pseudo_header_sum(src_addr: int, dst_addr: int, protocol: int, length: int) -> int:
    """Unfolded sum of the IPv4 pseudo-header for TCP/UDP: addresses, zero+protocol, length.

    Addresses are ints (see `addr.py`), so no bytes are built: the four address halves are
    added directly.
    """
    return (
        (src_addr >> 16)
        + (src_addr & 0xFFFF)
        + (dst_addr >> 16)
        + (dst_addr & 0xFFFF)
        + protocol
        + length
    )


def update16(old_checksum: int, old_word: int, new_word: int) -> int:
    """Incrementally update a stored checksum after one 16-bit word changed (RFC 1624 eqn. 3).

    Lets a forwarder rewrite TTL or an address without re-summing the packet:
    HC' = ~(~HC + ~m + m').
    """
    total = (~old_checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    return ~fold(total) & 0xFFFF


class Checksum:
    """Accumulates the one's-complement sum over pieces of any length, e.g. scattered buffers.

    Pieces behave as if concatenated. A piece that starts at an odd offset has its bytes in
    swapped word halves, and swapping halves is multiplying by 256 (mod 0xFFFF), so each piece
    adds `raw_sum(piece) * (256 if odd_offset else 1)`: no data is copied or re-aligned.
    """

    __slots__ = ("_odd", "_total")

    def __init__(self, initial: int = 0) -> None:
        self._total = initial
        self._odd = False

    def update(self, data: BytesLike) -> Checksum:
        """Add `data` as if appended to everything added so far; returns self for chaining."""
        value = raw_sum(data)
        self._total += value << 8 if self._odd else value
        if len(data) & 1:
            self._odd = not self._odd
        return self

    def sum(self) -> int:
        """The folded 16-bit one's-complement sum of everything added (zero-padded)."""
        return fold(self._total)

    def digest(self) -> int:
        """The Internet checksum of everything added."""
        return ~fold(self._total) & 0xFFFF

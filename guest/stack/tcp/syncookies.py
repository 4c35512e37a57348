"""SYN cookies (RFC 4987 section 3.6), encoded the way Linux encodes them.

When a listener's queue of half-open connections is full (a flood of SYNs from spoofed
sources fills it with connections that will never complete, each kept for a minute of SYN-ACK
retransmissions), it answers further SYNs without keeping anything: the SYN-ACK's initial
sequence number is a cookie from which the ACK completing the handshake proves it answers a
SYN-ACK of ours, and from which the connection's settings are rebuilt.

The layout is Linux's (`net/ipv4/syncookies.c`), so a capture of ours reads like one of Linux:

    ISN = H1(4-tuple) + client ISN + (count << 24) + ((H2(4-tuple, count) + mss_index) mod 2^24)

`count` advances every 64 seconds and a cookie is honoured for two periods; `mss_index` is the
largest of four MSS values not above the client's. Options that do not fit the sequence number
travel in the low 6 bits of our TSval, which the client echoes: window scale (4 bits, 15 for
"none") and SACK-permitted (1 bit); without timestamps a cookie connection has neither, as with
Linux. H1 and H2 are keyed BLAKE2s hashes of the stack's secret, as the ISNs are (`isn.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass

from .seq import SEQ_MASK

Endpoint = tuple[Hashable, int]

#: Linux's `msstab` for IPv4: the MSS values a cookie can carry.
MSS_TABLE = (536, 1300, 1440, 1460)
#: Seconds per cookie counter step; a cookie is valid for `MAX_AGE` steps after the one it
#: was made in (Linux: a 60-second counter and MAX_SYNCOOKIE_AGE 2).
PERIOD = 64.0
MAX_AGE = 2
_COUNT_BITS = 8
_DATA_MASK = (1 << 24) - 1
#: TSval low bits: window scale (0-14, 15 = none), then SACK-permitted.
TS_OPTION_BITS = 6
_TS_OPTION_MASK = (1 << TS_OPTION_BITS) - 1
_NO_WSCALE = 0xF
_SACK_BIT = 0x10


@dataclass(frozen=True, slots=True)
class CookieOptions:
    """What a validated cookie (and its timestamp echo) says about the handshake."""

    mss: int
    wscale: int | None  # the client's window scale, None: no scaling
    sack: bool


class SynCookies:
    """Make and check cookies with one stack's secret."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the cookie secret must not be empty")
        self._secret = secret[:32]

    def _hash(self, person: bytes, local: Endpoint, remote: Endpoint, count: int = 0) -> int:
        h = hashlib.blake2s(key=self._secret, person=person)
        h.update(repr((local, remote, count)).encode())
        return int.from_bytes(h.digest()[:4], "big")

    @staticmethod
    def counter(now: float) -> int:
        return int(now // PERIOD)

    def make(self, local: Endpoint, remote: Endpoint, client_isn: int, mss: int, now: float) -> int:
        """Our ISN for a SYN from `remote` with initial sequence `client_isn` announcing `mss`."""
        index = max((i for i, m in enumerate(MSS_TABLE) if m <= mss), default=0)
        count = self.counter(now)
        data = (self._hash(b"cookie2", local, remote, count) + index) & _DATA_MASK
        high = (count & ((1 << _COUNT_BITS) - 1)) << 24
        return (self._hash(b"cookie1", local, remote) + client_isn + high + data) & SEQ_MASK

    def check(
        self, local: Endpoint, remote: Endpoint, client_isn: int, cookie: int, now: float
    ) -> int | None:
        """The MSS a valid cookie carries; None for a forged, mangled or expired one."""
        value = (cookie - self._hash(b"cookie1", local, remote) - client_isn) & SEQ_MASK
        count = self.counter(now)
        age = (count - (value >> 24)) & ((1 << _COUNT_BITS) - 1)
        if age > MAX_AGE:
            return None
        made = count - age
        index = (value - self._hash(b"cookie2", local, remote, made)) & _DATA_MASK
        return MSS_TABLE[index] if index < len(MSS_TABLE) else None


def encode_ts_options(tsval: int, wscale: int | None, sack: bool) -> int:
    """Our SYN-ACK's TSval with the client's window scale and SACK-permitted in its low bits."""
    bits = (_NO_WSCALE if wscale is None else min(wscale, 14)) | (_SACK_BIT if sack else 0)
    encoded = (tsval & ~_TS_OPTION_MASK) | bits
    if encoded > tsval:
        # Never ahead of our clock: the peer's PAWS check would refuse what we send next.
        encoded -= 1 << TS_OPTION_BITS
    return encoded & SEQ_MASK


def decode_ts_options(tsecr: int | None) -> tuple[int | None, bool]:
    """The window scale and SACK-permitted the echoed TSval carries; none without one."""
    if not tsecr:
        return None, False
    wscale = tsecr & 0xF
    return (None if wscale == _NO_WSCALE else wscale), bool(tsecr & _SACK_BIT)

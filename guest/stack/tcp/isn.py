"""Initial sequence numbers and timestamp offsets (RFC 6528, RFC 7323 section 5.4).

The state machine takes its ISN as an argument so that it stays deterministic; this module is
the recommended way for a stack to compute one: ISN = M + F(4-tuple, secret), where M is a
4-microsecond clock taken from the caller's time and F a keyed hash. The secret and the time
come from the caller, so tests can replay a connection exactly.

Addresses are opaque to the TCP code; they are hashed through `repr`, so they must have a
deterministic representation (strings, ints, bytes, `ipaddress` objects, tuples of those).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

from .seq import SEQ_MASK

Endpoint = tuple[Hashable, int]


def _keyed_hash32(secret: bytes, domain: bytes, local: Endpoint, remote: Endpoint) -> int:
    """F() of RFC 6528 section 3: a keyed hash of the connection identifiers."""
    h = hashlib.blake2s(key=secret[:32], person=domain[:8])
    h.update(repr((local, remote)).encode())
    return int.from_bytes(h.digest()[:4], "big")


def rfc6528_isn(secret: bytes, local: Endpoint, remote: Endpoint, now: float) -> int:
    """ISN = M + F(localip, localport, remoteip, remoteport, secretkey) (RFC 6528 section 3).

    M advances every 4 microseconds of `now`, so a reincarnated connection with the same 4-tuple
    starts above the old one's sequence space, while F keeps off-path attackers guessing.
    """
    m = int(now * 250_000)
    return (m + _keyed_hash32(secret, b"isn", local, remote)) & SEQ_MASK


def timestamp_offset(secret: bytes, local: Endpoint, remote: Endpoint) -> int:
    """A per-connection TSval offset (RFC 7323 section 5.4), so TSval does not leak uptime."""
    return _keyed_hash32(secret, b"tsoff", local, remote)


class IsnGenerator:
    """Callable bundling a secret: `gen(local, remote, now) -> ISN` (what `TcpListener` takes)."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the ISN secret must not be empty")
        self._secret = secret

    def __call__(self, local: Endpoint, remote: Endpoint, now: float) -> int:
        return rfc6528_isn(self._secret, local, remote, now)

    def ts_offset(self, local: Endpoint, remote: Endpoint) -> int:
        """Timestamp offset for the same connection."""
        return timestamp_offset(self._secret, local, remote)

"""Sans-I/O IPv4 fragment reassembly (RFC 791 section 3.2, RFC 815 hole bookkeeping).

The caller feeds validated fragments with the current time; the reassembler never reads a
clock, so tests drive expiry with a fake time and the stack decides where "now" comes from.

Policy, following Linux (net/ipv4/inet_fragment.c) rather than RFC 791's permissive overwrite:
* Datagrams are keyed by (src, dst, ident, protocol) and expire `timeout` seconds (30 by
  default, Linux's ipfrag_time) after their first fragment arrived.
* An exact duplicate (same offset and length) is dropped alone; any other overlap discards the
  whole datagram (RFC 5722's rule, which Linux applies to IPv4 too): overlaps are only ever
  produced by attackers (teardrop, IDS evasion), never by honest fragmentation.
* Memory is bounded by `max_bytes` of buffered payload and `max_datagrams` concurrent
  datagrams; when full, the oldest incomplete datagrams are evicted so that stale or
  attacker-held state cannot block new traffic for a whole timeout.
* Inconsistent fragments (non-final piece not a multiple of 8 bytes, beyond 65535, conflicting
  ends) discard the datagram they belong to.
Every dropped fragment is counted in `stats` under its cause.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Final, NamedTuple

from ._buf import BytesLike
from .ipv4 import MAX_PACKET_LEN, MIN_HEADER_LEN, Ipv4Repr

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_MAX_DATAGRAMS: Final = 64
DEFAULT_MAX_BYTES: Final = 1 << 20
#: Largest reassembled payload: Total Length is 16 bits and includes a 20-byte header.
MAX_PAYLOAD_LEN: Final = MAX_PACKET_LEN - MIN_HEADER_LEN

FragmentKey = tuple[int, int, int, int]  # (src, dst, ident, protocol)


class Datagram(NamedTuple):
    """A complete datagram: header of its first fragment (fragment fields cleared) + payload."""

    ip: Ipv4Repr
    payload: bytes | memoryview


@dataclass(slots=True)
class ReassemblyStats:
    """Counters, in fragments unless named otherwise. All dropped_* sum to `dropped`."""

    fragments: int = 0  # fragments accepted into a reassembly buffer
    reassembled: int = 0  # datagrams completed
    timeouts: int = 0  # datagrams (not fragments) that expired incomplete
    dropped_duplicate: int = 0  # exact duplicates of a buffered fragment
    dropped_overlap: int = 0  # buffered + incoming fragments discarded due to a partial overlap
    dropped_invalid: int = 0  # inconsistent lengths/offsets (incl. buffered ones discarded)
    dropped_timeout: int = 0  # buffered fragments discarded on expiry
    dropped_memory: int = 0  # evicted or refused by the `max_bytes` budget
    dropped_too_many: int = 0  # evicted or refused by the `max_datagrams` limit

    @property
    def dropped(self) -> int:
        return (
            self.dropped_duplicate
            + self.dropped_overlap
            + self.dropped_invalid
            + self.dropped_timeout
            + self.dropped_memory
            + self.dropped_too_many
        )


@dataclass(slots=True)
class _Pending:
    """One datagram under reassembly; fragments kept sorted by start, never overlapping."""

    deadline: float
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    received: int = 0  # payload bytes buffered (== sum of fragment lengths)
    total: int | None = None  # payload length, known once the last fragment arrived
    first: Ipv4Repr | None = None  # header of the offset-0 fragment


class Ipv4Reassembler:
    """Reassembles IPv4 fragments; feed with `push()`, age with `expire()` (also done by push).

    Memory accounting counts payload bytes only (not Python object overhead): it bounds what a
    peer can make us hold, which is what matters for the limit.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.stats = ReassemblyStats()
        # Insertion order == creation order == deadline order (timeout is constant), so the
        # oldest datagram is always first: expiry and eviction pop from the front.
        self._pending: dict[FragmentKey, _Pending] = {}
        self._bytes = 0

    def __len__(self) -> int:
        """Datagrams currently under reassembly."""
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes currently held, across all datagrams."""
        return self._bytes

    def push(self, ip: Ipv4Repr, payload: BytesLike, now: float) -> Datagram | None:
        """Offer one packet; returns the datagram when it is (or completes) a whole one.

        `ip` and `payload` come from a validated packet (`Ipv4Repr.parse` and
        `Ipv4Packet.payload`); `payload` is copied when buffered, so the frame may be reused.
        A packet that is not a fragment is passed straight through without copying.
        """
        if not ip.is_fragment:
            return Datagram(ip, payload)
        self.expire(now)
        stats = self.stats
        start = ip.frag_offset
        length = len(payload)
        end = start + length
        last = not ip.more_frags
        key = (ip.src_addr, ip.dst_addr, ip.ident, ip.protocol)
        pending = self._pending.get(key)

        if (not last and (length == 0 or length & 7)) or end > MAX_PAYLOAD_LEN:
            stats.dropped_invalid += 1 + self._discard(key, pending)
            return None

        if pending is None:
            if len(self._pending) >= self.max_datagrams:
                if self.max_datagrams <= 0:
                    stats.dropped_too_many += 1
                    return None
                stats.dropped_too_many += self._discard_oldest()
            pending = _Pending(now + self.timeout)
            self._pending[key] = pending

        # Consistency with the known (or implied) end of the datagram.
        if last:
            if (pending.total is not None and pending.total != end) or (
                pending.ends and pending.ends[-1] > end
            ):
                stats.dropped_invalid += 1 + self._discard(key, pending)
                return None
        elif pending.total is not None and end > pending.total:
            stats.dropped_invalid += 1 + self._discard(key, pending)
            return None

        # Neighbours in start order: exact duplicate, or overlap.
        i = bisect_right(pending.starts, start)
        if i and pending.starts[i - 1] == start and pending.ends[i - 1] == end:
            stats.dropped_duplicate += 1
            return None
        if (i and pending.ends[i - 1] > start) or (
            i < len(pending.starts) and pending.starts[i] < end
        ):
            stats.dropped_overlap += 1 + self._discard(key, pending)
            return None

        # Budget: make room by evicting the oldest other datagrams, else refuse.
        if self._bytes + length > self.max_bytes:
            while self._bytes + length > self.max_bytes and self._evict_other(key):
                pass
            if self._bytes + length > self.max_bytes:
                # Only this datagram is left and it does not fit: it never will.
                stats.dropped_memory += 1 + self._discard(key, pending)
                return None

        pending.starts.insert(i, start)
        pending.ends.insert(i, end)
        pending.data.insert(i, bytes(payload))
        pending.received += length
        self._bytes += length
        stats.fragments += 1
        if last:
            pending.total = end
        if start == 0:
            pending.first = ip

        if pending.total is not None and pending.received == pending.total:
            # No overlaps and `received` bytes within [0, total) means full coverage.
            del self._pending[key]
            self._bytes -= pending.received
            stats.reassembled += 1
            assert pending.first is not None
            header = replace(
                pending.first, payload_len=pending.total, more_frags=False, frag_offset=0
            )
            return Datagram(header, b"".join(pending.data))
        return None

    def expire(self, now: float) -> int:
        """Discard datagrams whose deadline has passed; returns how many expired."""
        expired = 0
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                break
            self.stats.dropped_timeout += self._discard(key, pending)
            self.stats.timeouts += 1
            expired += 1
        return expired

    # -- internals ----------------------------------------------------------------------------

    def _discard(self, key: FragmentKey, pending: _Pending | None) -> int:
        """Forget a datagram; returns how many buffered fragments went with it."""
        if pending is None:
            return 0
        del self._pending[key]
        self._bytes -= pending.received
        return len(pending.starts)

    def _discard_oldest(self) -> int:
        key = next(iter(self._pending))
        return self._discard(key, self._pending[key])

    def _evict_other(self, keep: FragmentKey) -> bool:
        """Evict the oldest datagram other than `keep` for memory; False if there is none."""
        for key, pending in self._pending.items():
            if key != keep:
                self.stats.dropped_memory += self._discard(key, pending)
                return True
        return False

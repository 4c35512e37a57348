"""ARP (RFC 826) for the one interface: cache, resolution with a bounded pending queue, replies.

Behaviour, following Linux's neighbour code where RFC 826 leaves room:
* Entries live `timeout` seconds after the last reply or request that taught them. An entry in
  use within `refresh` seconds of expiring is re-validated with a unicast request while it stays
  usable (Linux's STALE/PROBE idea), so a long TCP transfer never stalls on an expiring entry;
  an entry nobody refreshed simply expires and the next frame starts a new resolution.
* Learning follows RFC 826's merge rule: a sender already in the cache is updated by any ARP
  packet; a new one is added only if the packet is addressed to us (or we are resolving it), so
  broadcast chatter from the rest of the link cannot fill the cache.
* Frames for an unresolved next hop wait in a per-hop queue of at most `queue_limit` frames; as
  in Linux, a full queue drops its *oldest* frame (the newest data is the most useful to TCP).
  Queued frames are complete except for the destination MAC, which is patched in place when the
  reply arrives: nothing is rebuilt.
* A request is retransmitted every `retry_interval` until `max_requests` went unanswered; then
  the queue is dropped and counted, and the next frame for that hop starts over.
* A sender claiming our own address with another MAC is an address conflict: counted, never
  learned (it would let anyone hijack our traffic's return path).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from guest.stack.wire.addr import MAC_BROADCAST, MAC_ZERO
from guest.stack.wire.arp import OP_REPLY, OP_REQUEST, PACKET_LEN, ArpRepr
from guest.stack.wire.ethernet import ETHERTYPE_ARP, EthernetRepr
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN

from .counters import Counters

#: Linux defaults: base_reachable_time 30 s (reachable 15-45 s, then stale), retrans_time 1 s,
#: mcast_solicit 3, unres_qlen_bytes ~ 100 frames.
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_REFRESH: Final = 5.0
DEFAULT_RETRY_INTERVAL: Final = 1.0
DEFAULT_MAX_REQUESTS: Final = 3
DEFAULT_QUEUE_LIMIT: Final = 64
DEFAULT_MAX_ENTRIES: Final = 1024

FRAME_LEN: Final = ETH_LEN + PACKET_LEN


class _Entry:
    __slots__ = ("expires", "mac", "refresh_at")

    def __init__(self, mac: bytes, expires: float, refresh_at: float) -> None:
        self.mac = mac
        self.expires = expires
        self.refresh_at = refresh_at


class _Pending:
    __slots__ = ("frames", "next_retry", "requests")

    def __init__(self, next_retry: float) -> None:
        self.frames: deque[bytearray] = deque()
        self.next_retry = next_retry
        self.requests = 1


class ArpResolver:
    """Maps next-hop IPv4 addresses to MACs; answers requests for our address.

    Methods that may transmit take the caller's output list `out` and append frames to it.
    """

    def __init__(
        self,
        mac: bytes,
        ip: int,
        counters: Counters,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        refresh: float = DEFAULT_REFRESH,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if timeout <= 0 or retry_interval <= 0 or max_requests < 1 or queue_limit < 0:
            raise ValueError("ARP timers and limits must be positive")
        self.mac = mac
        self.ip = ip
        self.counters = counters
        self.timeout = timeout
        self.refresh = refresh if 0 < refresh < timeout else 0.0
        self.retry_interval = retry_interval
        self.max_requests = max_requests
        self.queue_limit = queue_limit
        self.max_entries = max(1, max_entries)
        self._cache: dict[int, _Entry] = {}
        self._pending: dict[int, _Pending] = {}
        #: Moves whenever an entry is learnt, replaced or evicted: a caller that remembered a
        #: MAC (`quiet`) knows by it that the cache changed under it.
        self.generation = 0

    # -- transmit side --------------------------------------------------------------------------

    def lookup(self, ip: int, now: float, out: list) -> bytes | None:
        """The MAC of next hop `ip`, or None if unknown (then `queue` the frame)."""
        entry = self._cache.get(ip)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._cache[ip]
            self.generation += 1
            return None
        if now >= entry.refresh_at:
            # In use and about to expire: re-validate with a unicast request, keep using it.
            entry.refresh_at = now + self.retry_interval
            out.append(self._request(ip, entry.mac))
        return entry.mac

    def quiet(self, ip: int) -> tuple[bytes, float] | None:
        """The cached MAC of `ip` and until when `lookup` answers it and does nothing else (no
        refresh probe, no expiry), while `generation` stays as it is; None if not cached."""
        entry = self._cache.get(ip)
        return None if entry is None else (entry.mac, min(entry.refresh_at, entry.expires))

    def queue(self, ip: int, frame: bytearray, now: float, out: list) -> None:
        """Hold `frame` (destination MAC to be patched) until `ip` resolves; start resolving."""
        pending = self._pending.get(ip)
        if pending is None:
            if len(self._pending) >= self.max_entries:
                # Bounded like the cache: replies to a flood of spoofed on-link sources must
                # not grow a table that every poll walks.
                self.counters.arp_queue_drops += 1
                return
            pending = self._pending[ip] = _Pending(now + self.retry_interval)
            out.append(self._request(ip, None))
        frames = pending.frames
        if len(frames) >= self.queue_limit:
            self.counters.arp_queue_drops += 1
            if not frames:
                return  # queue_limit 0: nothing may wait
            frames.popleft()
        frames.append(frame)

    def poll(self, now: float, out: list) -> None:
        """Retransmit due requests; give up on hops that stayed silent."""
        if not self._pending:
            return
        for ip, pending in list(self._pending.items()):
            if pending.next_retry > now:
                continue
            if pending.requests >= self.max_requests:
                del self._pending[ip]
                self.counters.arp_failed += 1
                self.counters.arp_unresolved_drops += len(pending.frames)
                continue
            pending.requests += 1
            pending.next_retry = now + self.retry_interval
            out.append(self._request(ip, None))

    def next_timeout(self) -> float | None:
        """When `poll` must run next for request retransmission, or None."""
        if not self._pending:
            return None
        return min(p.next_retry for p in self._pending.values())

    def announce(self) -> bytearray:
        """A gratuitous ARP request (sender = target = our address) to refresh peers' caches."""
        self.counters.arp_gratuitous_out += 1
        return self._frame(MAC_BROADCAST, OP_REQUEST, MAC_ZERO, self.ip)

    # -- receive side ---------------------------------------------------------------------------

    def receive(self, packet: memoryview, now: float, out: list) -> None:
        """Process one ARP packet (the Ethernet payload). Raises `WireError` when malformed."""
        arp = ArpRepr.parse(packet)
        c = self.counters
        c.arp_in += 1
        request = arp.operation == OP_REQUEST
        if request:
            c.arp_requests_in += 1
        else:
            c.arp_replies_in += 1
        sha = arp.source_hardware_addr
        spa = arp.source_protocol_addr
        if sha[0] & 1:
            c.drop("arp:bad-sender")  # a group MAC never identifies a station
            return
        if spa == self.ip:
            if sha != self.mac:
                c.drop("arp:address-conflict")
            return
        for_us = arp.target_protocol_addr == self.ip
        if spa and (for_us or spa in self._cache or spa in self._pending):
            self._learn(spa, sha, now, out)  # includes gratuitous updates of known peers
        elif not for_us:
            c.drop("arp:not-for-us")
            return
        if request and for_us:
            # Probes (spa 0, RFC 5227) are answered too: the owner must defend its address.
            c.arp_replies_out += 1
            out.append(self._frame(sha, OP_REPLY, sha, spa))

    def _learn(self, ip: int, mac: bytes, now: float, out: list) -> None:
        cache = self._cache
        if ip not in cache and len(cache) >= self.max_entries:
            del cache[next(iter(cache))]  # oldest insertion
        refresh_at = now + self.timeout - self.refresh if self.refresh else float("inf")
        cache[ip] = _Entry(mac, now + self.timeout, refresh_at)
        self.generation += 1
        self.counters.arp_learned += 1
        pending = self._pending.pop(ip, None)
        if pending is not None:
            self.counters.arp_resolved += 1
            for frame in pending.frames:
                frame[0:6] = mac
                out.append(frame)

    # -- introspection --------------------------------------------------------------------------

    def entries(self, now: float) -> dict[int, bytes]:
        """Valid cache entries, ip -> MAC."""
        return {ip: e.mac for ip, e in self._cache.items() if e.expires > now}

    def pending_hops(self) -> dict[int, int]:
        """Next hops under resolution -> frames waiting."""
        return {ip: len(p.frames) for ip, p in self._pending.items()}

    # -- frames ---------------------------------------------------------------------------------

    def _request(self, target_ip: int, target_mac: bytes | None) -> bytearray:
        self.counters.arp_requests_out += 1
        if target_mac is None:
            return self._frame(MAC_BROADCAST, OP_REQUEST, MAC_ZERO, target_ip)
        return self._frame(target_mac, OP_REQUEST, target_mac, target_ip)

    def _frame(self, eth_dst: bytes, op: int, tha: bytes, tpa: int) -> bytearray:
        buf = bytearray(FRAME_LEN)
        EthernetRepr(self.mac, eth_dst, ETHERTYPE_ARP).emit(buf, 0)
        ArpRepr(op, self.mac, self.ip, tha, tpa).emit(buf, ETH_LEN)
        return buf

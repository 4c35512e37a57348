"""One flat counters object for the whole protocol domain.

Hot-path counters are plain attributes of a `__slots__` object, because `c.tcp_in += 1` is the
cheapest way CPython has to count (a slot store, no dict or string hashing). Drops are rare and
have open-ended causes (every `WireError.reason` of every layer, plus the stack's own policy
drops), so they go to one dict keyed "layer:reason" ("ipv4:bad-checksum", "eth:not-for-us").
`as_dict()` flattens both into one level (`drop.ipv4:bad-checksum`) for JSON reports, so that
a result file can be diffed and plotted without knowing the object's shape.
"""

from __future__ import annotations

# Names of the integer counters, grouped by layer. Kept as data so that `__slots__`,
# `__init__` and `as_dict` cannot drift apart.
_FIELDS: tuple[str, ...] = (
    # Link layer.
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    # ARP.
    "arp_in",
    "arp_requests_in",
    "arp_replies_in",
    "arp_requests_out",
    "arp_replies_out",
    "arp_gratuitous_out",
    "arp_learned",
    "arp_resolved",  # pending next hops that got an answer
    "arp_failed",  # next hops given up on after the retries
    "arp_queue_drops",  # frames dropped by the per-next-hop pending bound
    "arp_unresolved_drops",  # frames dropped because their next hop never answered
    # IPv4.
    "ip_in",
    "ip_out",
    "ip_frags_in",
    "ip_reassembled",
    "ip_frags_out",
    # ICMP.
    "icmp_in",
    "icmp_out",
    "icmp_echo_requests_in",
    "icmp_echo_replies_out",
    "icmp_unreachable_in",
    "icmp_unreachable_out",
    "icmp_rate_limited",
    # UDP.
    "udp_in",
    "udp_out",
    "udp_no_port",
    "udp_queue_drops",
    # TCP.
    "tcp_in",
    "tcp_out",
    "tcp_resets_out",  # RSTs answering segments that matched no connection or listener
    "tcp_resets_rate_limited",  # such RSTs not sent: the stack-wide bound was reached
    "tcp_listen_drops",  # SYNs a full backlog refused
    "tcp_syncookies_sent",  # SYN-ACKs answering SYNs statelessly (the backlog was full)
    "tcp_syncookies_validated",  # ACKs whose cookie was ours: connections made from them
    "tcp_syncookies_failed",  # ACKs that looked like cookie answers but were not ours
    "tcp_connections_opened",
    "tcp_connections_accepted",
)


class Counters:
    """Every counter of one `NetStack`; counters only grow."""

    __slots__ = (*_FIELDS, "drops")

    def __init__(self) -> None:
        for name in _FIELDS:
            setattr(self, name, 0)
        #: "layer:reason" -> count, e.g. "ipv4:bad-checksum", "tcp:no-socket".
        self.drops: dict[str, int] = {}

    def drop(self, key: str) -> None:
        """Count one dropped frame/packet under `key` ("layer:reason")."""
        drops = self.drops
        drops[key] = drops.get(key, 0) + 1

    @property
    def drops_total(self) -> int:
        """All drops, whatever their reason."""
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, int]:
        """One flat dict: every counter, then `drop.<layer:reason>` for each drop cause."""
        out = {name: getattr(self, name) for name in _FIELDS}
        out["drops_total"] = self.drops_total
        for key in sorted(self.drops):
            out[f"drop.{key}"] = self.drops[key]
        return out

    def __repr__(self) -> str:
        nonzero = {k: v for k, v in self.as_dict().items() if v}
        return f"Counters({nonzero})"

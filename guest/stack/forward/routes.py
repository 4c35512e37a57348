"""The forwarder's routing table: connected subnets and static routes, longest prefix first.

A middle node has a handful of routes, so the table is one dict per prefix length, probed from
the longest length down: a lookup costs one mask and one dict probe per distinct length in use
(two or three on a chain node), with no trie to maintain.
"""

from __future__ import annotations

from dataclasses import dataclass

from guest.stack.core.ipv4 import as_ip, parse_cidr


def prefix_mask(prefix_len: int) -> int:
    """The netmask of a prefix length as an int (0 for /0)."""
    if not 0 <= prefix_len <= 32:
        raise ValueError(f"prefix length {prefix_len}")
    return (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Route:
    """`network/prefix_len` is reached through `iface`, via `gateway` (None: on-link).

    A static route may leave `iface` empty: the forwarder takes the interface whose connected
    subnet holds the gateway, as `ip route add ... via GW` does.
    """

    network: int
    prefix_len: int
    gateway: int | None = None
    iface: str = ""

    @classmethod
    def from_text(cls, cidr: str, via: int | str | None = None, iface: str = "") -> Route:
        """`Route.from_text("10.9.0.0/16", via="198.18.2.2")`; "default" means 0.0.0.0/0."""
        addr, prefix = (0, 0) if cidr == "default" else parse_cidr(cidr)
        return cls(addr & prefix_mask(prefix), prefix, None if via is None else as_ip(via), iface)


@dataclass(frozen=True, slots=True)
class NextHop:
    """What a lookup yields: the egress interface and the on-link address to resolve.

    `gateway` None means the destination itself is on the link.
    """

    iface: str
    gateway: int | None


class RoutingTable:
    """Longest-prefix-match table of `NextHop`s."""

    __slots__ = ("_by_len", "_probe")

    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, NextHop]] = {}
        #: (mask, table) pairs, longest prefix first: what `lookup` walks.
        self._probe: tuple[tuple[int, dict[int, NextHop]], ...] = ()

    def add(self, network: int, prefix_len: int, hop: NextHop) -> None:
        """Add (or replace) the route for `network/prefix_len`; host bits must be zero."""
        mask = prefix_mask(prefix_len)
        if network & ~mask & 0xFFFFFFFF:
            raise ValueError(f"route {network:#010x}/{prefix_len} has host bits set")
        self._by_len.setdefault(prefix_len, {})[network] = hop
        self._probe = tuple(
            (prefix_mask(length), self._by_len[length])
            for length in sorted(self._by_len, reverse=True)
        )

    def lookup(self, dst: int) -> NextHop | None:
        """The most specific route for `dst`, or None when no route covers it."""
        for mask, table in self._probe:
            hop = table.get(dst & mask)
            if hop is not None:
                return hop
        return None

    def routes(self) -> list[tuple[int, int, NextHop]]:
        """Every route as (network, prefix_len, hop), longest prefix first (for reports)."""
        return [
            (network, length, hop)
            for length in sorted(self._by_len, reverse=True)
            for network, hop in self._by_len[length].items()
        ]

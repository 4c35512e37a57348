"""IPv4 for one interface: input validation and filtering, reassembly, routing, output.

The stack has exactly one address on one link, so routing is two rules (on-link subnet, else
the optional default gateway) and the local address needs no table: a received datagram is ours
when its destination is our address, the limited broadcast or the subnet's directed broadcast.

Input runs once per received frame, so `Ipv4Input.receive` does the whole job in one pass:
`Ipv4Repr.parse` (lengths, version, checksum), destination and source filtering, then
reassembly, which is a pass-through without copying for the common unfragmented packet.

Output: TCP sets DF (segments are sized from the MTU, as Linux does with PMTU discovery on);
UDP and ICMP leave DF clear and are fragmented here when larger than the MTU, which is what
lets a 4000-byte ping be answered on a 1500-byte link. Every datagram takes the next value of
one 16-bit identification counter (RFC 6864 only requires uniqueness for fragmentable ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from guest.stack.wire.addr import IPV4_BROADCAST, ipv4
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN
from guest.stack.wire.ethernet import EthernetRepr
from guest.stack.wire.ipv4 import MIN_HEADER_LEN, Ipv4Repr
from guest.stack.wire.ipv4_frag import Ipv4Reassembler

from .counters import Counters

#: RFC 791: every host must accept 576-byte datagrams; smaller MTUs cannot carry TCP sensibly.
MIN_MTU: Final = 576
#: The classes of destination `Ipv4Input.receive` accepts.
UNICAST: Final = 1
BROADCAST: Final = 2

_MULTICAST_MASK: Final = 0xF0000000
_MULTICAST_NET: Final = 0xE0000000


def parse_cidr(text: str) -> tuple[int, int]:
    """ "198.18.1.1/24" -> (address int, prefix length)."""
    addr, sep, prefix = text.partition("/")
    if not sep or not prefix.isdigit() or not 0 <= int(prefix) <= 32:
        raise ValueError(f"not an IPv4 interface address with prefix: {text!r}")
    return ipv4(addr), int(prefix)


def as_ip(value: int | str) -> int:
    """Accept an address as int (the stack's representation) or dotted-quad text."""
    if isinstance(value, str):
        return ipv4(value)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"not an IPv4 address: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Ipv4Interface:
    """Address, subnet, MTU and default gateway of the one interface."""

    addr: int
    prefix_len: int
    mtu: int = 1500
    gateway: int | None = None
    mask: int = field(init=False)
    network: int = field(init=False)
    broadcast: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.prefix_len <= 32:
            raise ValueError(f"prefix length {self.prefix_len}")
        if self.mtu < MIN_MTU or self.mtu > 65535:
            raise ValueError(f"mtu must be in [{MIN_MTU}, 65535], got {self.mtu}")
        mask = (0xFFFFFFFF << (32 - self.prefix_len)) & 0xFFFFFFFF
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "network", self.addr & mask)
        object.__setattr__(self, "broadcast", (self.addr & mask) | (~mask & 0xFFFFFFFF))
        if self.gateway is not None and (self.gateway & mask) != self.network:
            raise ValueError("the gateway must be on the interface's subnet")

    @classmethod
    def from_text(
        cls, cidr: str, mtu: int = 1500, gateway: int | str | None = None
    ) -> Ipv4Interface:
        addr, prefix = parse_cidr(cidr)
        return cls(addr, prefix, mtu, None if gateway is None else as_ip(gateway))

    def next_hop(self, dst: int) -> int | None:
        """Where a datagram for `dst` goes on the link: itself, the gateway, or nowhere (None).

        Our own address has no route: there is no loopback device in this stack.
        """
        if dst == self.addr:
            return None
        if (dst & self.mask) == self.network:
            return dst
        return self.gateway

    def is_broadcast(self, dst: int) -> bool:
        return dst == IPV4_BROADCAST or (dst == self.broadcast and self.prefix_len < 31)


class Ipv4Input:
    """Receive side: validate, filter, reassemble. Drops are counted, never raised."""

    __slots__ = ("addr", "broadcast", "counters", "reassembler")

    def __init__(
        self, iface: Ipv4Interface, counters: Counters, reassembler: Ipv4Reassembler
    ) -> None:
        self.addr = iface.addr
        self.broadcast = iface.broadcast if iface.prefix_len < 31 else IPV4_BROADCAST
        self.counters = counters
        self.reassembler = reassembler

    def receive(
        self, packet: memoryview, now: float, verify: bool
    ) -> tuple[Ipv4Repr, memoryview | bytes, int] | None:
        """Decode the IPv4 packet `packet` (the Ethernet payload, padding included).

        Returns (header, payload, UNICAST|BROADCAST) for a whole datagram addressed to us, None
        when the packet was dropped (counted) or is a fragment still waiting for the others.
        Raises `WireError` for malformed headers; the caller counts those by reason.
        """
        ip = Ipv4Repr.parse(packet, verify)
        c = self.counters
        c.ip_in += 1
        dst = ip.dst_addr
        if dst == self.addr:
            kind = UNICAST
        elif dst == IPV4_BROADCAST or dst == self.broadcast:
            kind = BROADCAST
        else:
            c.drop("ipv4:not-for-us")
            return None
        src = ip.src_addr
        if src == IPV4_BROADCAST or (src & _MULTICAST_MASK) == _MULTICAST_NET or src == self.addr:
            c.drop("ipv4:bad-source")  # martian: nobody may send from these
            return None
        header_len = (packet[0] & 0x0F) << 2
        payload = packet[header_len : header_len + ip.payload_len]
        if ip.more_frags or ip.frag_offset:
            c.ip_frags_in += 1
            whole = self.reassembler.push(ip, payload, now)
            if whole is None:
                return None  # more to come, or dropped (counted in the reassembler's stats)
            c.ip_reassembled += 1
            return whole.ip, whole.payload, kind
        return ip, payload, kind


class Ipv4Output:
    """Transmit side: identification counter and fragmentation into Ethernet frames."""

    __slots__ = ("addr", "counters", "ident", "mtu", "src_mac", "ttl")

    def __init__(self, iface: Ipv4Interface, src_mac: bytes, counters: Counters, ttl: int = 64):
        self.addr = iface.addr
        self.mtu = iface.mtu
        self.src_mac = src_mac
        self.counters = counters
        self.ttl = ttl
        self.ident = 0

    def next_ident(self) -> int:
        ident = self.ident = (self.ident + 1) & 0xFFFF
        return ident

    def header(self, dst: int, protocol: int, dont_frag: bool = False) -> Ipv4Repr:
        """A fresh header template for `dst` (payload length and ident filled at emit time)."""
        return Ipv4Repr(self.addr, dst, protocol, 0, self.ttl, dont_frag=dont_frag)

    def frames(self, dst: int, protocol: int, payload: bytes | bytearray | memoryview) -> list:
        """Ethernet frames carrying `payload` (a whole transport message) to `dst`.

        One frame when it fits the MTU, else RFC 791 fragments (data in multiples of 8 bytes).
        Destination MACs are left zero: the caller patches them once the next hop resolved.
        """
        n = len(payload)
        ident = self.next_ident()
        eth = EthernetRepr(self.src_mac, b"\x00" * 6, 0x0800)
        space = self.mtu - MIN_HEADER_LEN
        if n <= space:
            buf = bytearray(ETH_LEN + MIN_HEADER_LEN + n)
            eth.emit(buf, 0)
            Ipv4Repr(self.addr, dst, protocol, n, self.ttl, ident).emit(buf, ETH_LEN)
            buf[ETH_LEN + MIN_HEADER_LEN :] = payload
            self.counters.ip_out += 1
            return [buf]
        if n > 0xFFFF - MIN_HEADER_LEN:
            self.counters.drop("ipv4:too-big")
            return []
        chunk = space & ~7
        view = memoryview(payload)
        out = []
        for offset in range(0, n, chunk):
            piece = view[offset : offset + chunk]
            more = offset + chunk < n
            buf = bytearray(ETH_LEN + MIN_HEADER_LEN + len(piece))
            eth.emit(buf, 0)
            Ipv4Repr(
                self.addr,
                dst,
                protocol,
                len(piece),
                self.ttl,
                ident,
                more_frags=more,
                frag_offset=offset,
            ).emit(buf, ETH_LEN)
            buf[ETH_LEN + MIN_HEADER_LEN :] = piece
            out.append(buf)
        self.counters.ip_out += 1
        self.counters.ip_frags_out += len(out)
        return out

"""Sans-I/O IPv4 forwarding between Ethernet interfaces: frames and time in, frames out.

`Forwarder.handle(iface, frame, now)` takes one received Ethernet frame and returns what must be
sent, as `(egress interface name, frame)` pairs: the frame itself forwarded, ARP requests and
replies, ICMP errors, frames released by an ARP reply. Nothing here reads a clock or touches a
socket; the device wiring (PACKET_MMAP rings) drives it.

The fast path works **in place** on the received buffer: one `struct` unpack of the IPv4
header, a full header checksum verification (20 bytes, as the kernel does), then the TTL byte,
the checksum (RFC 1624 eqn. 3 incremental update, `wire.checksum.update16`) and both MACs are
rewritten in the buffer and that same buffer is returned. Only fragmentation, ICMP errors and
ARP build new buffers. A `bytearray` frame is rewritten (and padding trimmed) in place; a
`memoryview` (a ring slot) is rewritten in place and returned sliced; `bytes` are copied once.
A frame that must wait for ARP is copied, so the caller may reuse its buffer after `handle`.

What is forwarded: a unicast Ethernet frame to the ingress interface's MAC carrying a valid
IPv4 packet (version 4, IHL 5, Total Length within the frame, header checksum correct) from a
unicast source to a unicast destination that is not one of ours and has a route, with TTL > 1.
Everything else is dropped and counted under its cause (`stats()`), never raised:

* Malformed headers and checksums: dropped silently (RFC 1812 5.2.2), as the kernel does.
* IP options (IHL > 5): dropped and counted (`options_dropped`). Forwarding them untouched would
  not be what the kernel forwards (it records its address in Record Route and Timestamp, and
  drops source routes by default); processing them belongs to a slow path nobody needs here.
* Broadcast or multicast, at the link or IP layer (limited broadcast, a connected subnet's
  directed broadcast, 224/4): never forwarded (no multicast routing; Linux's `bc_forwarding`
  is off by default). Martian sources and destinations (0/8, 127/8, 240/4, our own addresses as
  source): dropped, as `rp_filter`-less Linux still does.
* Fragments are forwarded as they are (a router does not reassemble), after checks the kernel's
  forwarding path does not make but no honest sender fails: a non-last fragment whose data is
  not a non-zero multiple of 8 bytes, or any fragment reaching past 65535 bytes (ping of
  death), is dropped as `bad_fragment`.
* Larger than the egress MTU: with DF, dropped with an ICMP fragmentation-needed carrying the
  egress MTU (RFC 1191); without DF, **fragmented** (RFC 791, RFC 1812 5.2.6), as the kernel
  does: dropping would break old stacks and UDP senders that rely on routers fragmenting.
  A fragment that is itself too big is cut again, its offsets and last MF flag kept.
* Frames longer than the ingress MTU allows (`oversized`): dropped. The wiring must turn GRO/LRO
  off on the NICs, or coalesced frames end here.

ICMP errors (RFC 792, RFC 1812 4.3.2): time exceeded for TTL 0/1, destination unreachable (net)
for no route, fragmentation needed. Their source is the ingress interface's address; they quote
the offending datagram as received (header and as much payload as keeps the error within 576
bytes, RFC 1812 4.3.2.3; at least the 8 bytes RFC 792 asks for when the datagram has them), and
are routed and resolved like any forwarded packet. Never sent about an ICMP error, a non-first
fragment, or anything broadcast, multicast or martian (those never get this far), and at most
`icmp_rate` per second in bursts of `icmp_burst` (a token bucket on the caller's time, Linux's
icmp_msgs_per_sec/icmp_msgs_burst defaults).

With offloads (`handle_vnet`, for a packet socket with PACKET_VNET_HDR), every frame in and out
starts with the 10-byte virtio_net_hdr (`wire.vnet`): GRO hands up TCP super-frames of up to
64 KiB, and a super-frame forwarded in place keeps its header, so the egress NIC (TSO) or the
kernel (GSO) cuts it into the same segments again. That is what Linux's own forwarding does
with GRO on: one pass through the engine per super-frame instead of one per wire frame. Its
MTU check is the kernel's for GSO packets (`skb_gso_validate_network_len`): each *segment*
(IP and TCP headers plus `gso_size`) must fit the egress MTU; one that does not is answered
with fragmentation-needed when DF is set, and dropped as `gso_too_big` otherwise (the kernel
would segment and then fragment it; no TCP sender clears DF, so that slow path stays out). A
super-frame that is not IPv4/TCP with its checksum left partial, as GRO makes them, is dropped
as `bad_gso`. A plain frame whose TCP/UDP checksum was left partial (NEEDS_CSUM: a local sender
over a veth) gets it completed here, so that fragmenting or quoting it stays correct. Frames
the engine builds (ARP, ICMP errors, fragments) go out with the all-zero header.

The fast path (`fast_path`, on by default) is a flow cache, as routers keep one beside their
routing table: per ingress interface, (source, destination) -> (egress interface, next hop's
MAC), filled by the full path when it forwards a frame to a resolved next hop. A frame of a
cached flow whose header is as plain as can be (IHL 5, not a fragment, TTL > 1, Total Length
within the frame and the egress MTU, checksum correct) is rewritten and sent without the
source and destination checks, the route lookup and the ARP lookup, whose answers the cache
holds; anything else takes the full path, which stays the specification (differential tests
run both over the same frames and times). An entry lives while the next hop's ARP entry would
answer without side effects (`ArpResolver.quiet`, `generation`) and the routes stay
as they are; at most `MAX_FLOWS` per interface (a flood of spoofed sources empties it).

Next hops are resolved by one `GuardedArp` per interface (see `neighbors.py` for the spoofing
policy): a frame for an unresolved next hop waits in a queue of at most `queue_limit` frames
per next hop, `max_neighbors` next hops under resolution per interface, for at most
`arp_max_requests` x `arp_retry_interval` seconds; what overflows or times out is counted
(`queue_drops`). Call `poll(now)` by `next_timeout()` for retransmissions and expiry; `handle`
also runs it when it is overdue, so the bounds hold even for a caller that never polls.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from guest.stack.core.counters import Counters
from guest.stack.core.icmp import DEFAULT_ERROR_BURST, DEFAULT_ERROR_RATE
from guest.stack.core.ipv4 import Ipv4Interface
from guest.stack.core.ratelimit import TokenBucket
from guest.stack.wire.addr import IPV4_BROADCAST, MAC_ZERO, mac
from guest.stack.wire.checksum import checksum, ones_sum, update16
from guest.stack.wire.errors import WireError
from guest.stack.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN
from guest.stack.wire.icmp import (
    MAX_QUOTE_LEN,
    TYPE_DST_UNREACHABLE,
    TYPE_TIME_EXCEEDED,
    UNREACH_FRAG_NEEDED,
    UNREACH_NET,
    Icmpv4Repr,
)
from guest.stack.wire.ipv4 import (
    FLAG_DF,
    FLAG_MF,
    FRAG_OFFSET_MASK,
    MAX_PACKET_LEN,
    MIN_HEADER_LEN,
    PROTO_ICMP,
    PROTO_TCP,
    Ipv4Repr,
)
from guest.stack.wire.vnet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    PLAIN_BYTES,
    TCP_CSUM_OFFSET,
    UDP_CSUM_OFFSET,
)
from guest.stack.wire.vnet import HEADER_LEN as VNET_LEN

from .neighbors import GuardedArp
from .routes import NextHop, Route, RoutingTable

DEFAULT_QUEUE_LIMIT: Final = 32
#: Flow cache entries per ingress interface before it is emptied and starts again.
MAX_FLOWS: Final = 1024
DEFAULT_MAX_NEIGHBORS: Final = 256
DEFAULT_ARP_TIMEOUT: Final = 60.0
DEFAULT_ARP_RETRY_INTERVAL: Final = 1.0
DEFAULT_ARP_MAX_REQUESTS: Final = 3
#: TTL of the ICMP errors we originate (Linux's default ip_default_ttl).
DEFAULT_TTL: Final = 64
#: DSCP of the ICMP errors we originate: CS6, network control (Linux: IPTOS_PREC_INTERNETCONTROL).
ICMP_DSCP: Final = 48

_IP_AT = ETH_LEN  # where the IPv4 header starts in a frame
_PAYLOAD_AT = ETH_LEN + MIN_HEADER_LEN
# ver_ihl, tos, total_len, ident, flags_frag, ttl, proto, checksum, src, dst
_IP_HEADER = struct.Struct("!BBHHHBBHII")
_U16 = struct.Struct("!H")
#: virtio_net_hdr in the host's order: flags, gso_type, hdr_len, gso_size, csum_start/offset.
_VNET = struct.Struct("=BBHHHH")
#: Largest frame a super-frame may be: a 64 KiB IPv4 datagram behind its Ethernet header.
_GSO_MAX_FRAME = ETH_LEN + MAX_PACKET_LEN
_FLAG_RESERVED = 0x8000
#: First octets that are never a unicast host: "this network", loopback, class E (and 255).
_MARTIAN_FIRST: Final = frozenset({0, 127, *range(240, 256)})
#: ... and, as a source, multicast too (224/4): nobody sends from a group address.
_MARTIAN_SRC_FIRST: Final = _MARTIAN_FIRST | frozenset(range(224, 240))
#: ICMP types that are queries or replies, not errors: only about these may an error be sent.
_ICMP_NOT_ERRORS: Final = frozenset({0, 8, 9, 10, 13, 14, 15, 16, 17, 18})


@dataclass(frozen=True, slots=True)
class Interface:
    """One NIC of the forwarder: name, MAC (6 bytes), address/prefix and MTU (`ip`).

    `ip.gateway` is ignored: gateways are routes (`Route`).
    """

    name: str
    mac: bytes
    ip: Ipv4Interface

    @classmethod
    def from_text(cls, name: str, mac_text: str, cidr: str, mtu: int = 1500) -> Interface:
        """`Interface.from_text("eth1", "52:54:00:00:01:02", "198.18.1.2/24")`."""
        return cls(name, mac(mac_text), Ipv4Interface.from_text(cidr, mtu))


# Names of the forwarder's own counters; ARP's come from the resolvers (see `stats`).
_FIELDS: tuple[str, ...] = (
    "frames_in",
    "forwarded",  # datagrams routed out (sent, or queued for ARP)
    "bytes_forwarded",  # their IPv4 Total Lengths
    "fragmented",  # datagrams cut to fit the egress MTU
    "fragments_out",  # pieces those made
    "bad_frame",  # shorter than an Ethernet header
    "oversized",  # longer than the ingress MTU allows
    "other_ethertype",  # neither IPv4 nor ARP (IPv6, VLAN-tagged, ...)
    "not_for_us",  # IPv4 to another unicast MAC (promiscuous delivery)
    "bad_header",  # version, IHL, Total Length or truncation
    "bad_checksum",
    "options_dropped",
    "bad_fragment",
    "martian_source",
    "martian_dest",
    "broadcast_dropped",  # link or IP broadcast/multicast
    "to_self",  # addressed to one of our interfaces: not ours to forward
    "no_route",
    "ttl_expired",
    "frag_needed",  # DF and larger than the egress MTU
    "gso_forwarded",  # of `forwarded`: super-frames (handle_vnet), each cut again on egress
    "gso_segments",  # ... the wire segments they carry
    "bad_gso",  # a super-frame that is not IPv4/TCP with a partial checksum
    "gso_too_big",  # a super-frame whose segments exceed the egress MTU, DF not set
    "csum_completed",  # plain frames whose partial TCP/UDP checksum was completed here
    "bad_arp",  # malformed or unsupported ARP
    "icmp_time_exceeded_out",
    "icmp_unreachable_out",  # frag-needed ones included
    "icmp_rate_limited",
    "icmp_suppressed",  # not allowed: about an ICMP error or a non-first fragment, or unroutable
)


class ForwardCounters:
    """The forwarder's counters as slots (one attribute store per count on the hot path)."""

    __slots__ = _FIELDS

    def __init__(self) -> None:
        for name in _FIELDS:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _FIELDS}


class _Port:
    """Per-interface state: addresses, MTU and the next-hop resolver."""

    __slots__ = ("addr", "arp", "flows", "mac", "max_frame", "mtu", "name", "scratch")

    def __init__(self, iface: Interface, arp: GuardedArp) -> None:
        self.name = iface.name
        self.mac = iface.mac
        self.addr = iface.ip.addr
        self.mtu = iface.ip.mtu
        self.max_frame = ETH_LEN + iface.ip.mtu
        self.arp = arp
        #: Where the resolver appends the frames it sends (drained into `handle`'s output).
        self.scratch: list = []
        #: The flow cache of frames received here: src << 32 | dst -> (egress port, its next
        #: hop's MAC, valid until, the egress resolver's generation then).
        self.flows: dict[int, tuple[_Port, bytes, float, int]] = {}


Output = list[tuple[str, "bytearray | memoryview"]]


class Forwarder:
    """IPv4 forwarding engine for the interfaces it is given (see the module docstring)."""

    def __init__(
        self,
        interfaces: Sequence[Interface],
        routes: Iterable[Route] = (),
        *,
        icmp_rate: float = DEFAULT_ERROR_RATE,
        icmp_burst: int = DEFAULT_ERROR_BURST,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
        arp_timeout: float = DEFAULT_ARP_TIMEOUT,
        arp_retry_interval: float = DEFAULT_ARP_RETRY_INTERVAL,
        arp_max_requests: int = DEFAULT_ARP_MAX_REQUESTS,
        ttl: int = DEFAULT_TTL,
        fast_path: bool = True,
    ) -> None:
        if not interfaces:
            raise ValueError("a forwarder needs at least one interface")
        self.arp_counters = Counters()
        self._ports: dict[str, _Port] = {}
        self._table = RoutingTable()
        for iface in interfaces:
            if iface.name in self._ports:
                raise ValueError(f"interface {iface.name!r} given twice")
            if len(iface.mac) != 6 or iface.mac[0] & 1:
                raise ValueError(f"interface {iface.name!r}: not a unicast MAC")
            arp = GuardedArp(
                iface.mac,
                iface.ip.addr,
                self.arp_counters,
                timeout=arp_timeout,
                retry_interval=arp_retry_interval,
                max_requests=arp_max_requests,
                queue_limit=queue_limit,
                max_entries=max_neighbors,
            )
            self._ports[iface.name] = _Port(iface, arp)
            self._table.add(iface.ip.network, iface.ip.prefix_len, NextHop(iface.name, None))
        self.interfaces = tuple(interfaces)
        for route in routes:
            self.add_route(route)
        self._local = frozenset(i.ip.addr for i in interfaces)
        self._directed = frozenset(i.ip.broadcast for i in interfaces if i.ip.prefix_len < 31)
        self._limiter = TokenBucket(icmp_rate, icmp_burst)
        self._ttl = ttl
        self._ident = 0
        self._poll_at = float("inf")
        self._fast = fast_path
        #: Frames the fast path forwarded (not a counter of `stats`: with and without the fast
        #: path the counters are the same, which the differential tests check).
        self.fast_hits = 0
        #: The frame `handle_vnet` is working on, header first (None in `handle`): a frame held
        #: for ARP keeps that virtio_net_hdr, so a super-frame is still one when released.
        self._rx_vnet: memoryview | None = None
        self.counters = ForwardCounters()

    # -- configuration --------------------------------------------------------------------------

    def add_route(self, route: Route) -> None:
        """Add a static route; without `iface`, the gateway's connected subnet names it."""
        name = route.iface
        if route.gateway is not None:
            hop = self._table.lookup(route.gateway)
            if hop is None or hop.gateway is not None:
                raise ValueError(f"gateway {route.gateway:#010x} is on no connected subnet")
            if name and name != hop.iface:
                raise ValueError(f"gateway {route.gateway:#010x} is not on {name!r}")
            name = hop.iface
        elif name not in self._ports:
            raise ValueError(f"route without gateway needs a known interface, not {name!r}")
        self._table.add(route.network, route.prefix_len, NextHop(name, route.gateway))
        for port in self._ports.values():
            port.flows.clear()  # a cached egress may no longer be the route's

    def routes(self) -> list[tuple[int, int, NextHop]]:
        return self._table.routes()

    # -- the engine -----------------------------------------------------------------------------

    def handle(self, iface: str, frame: bytearray | memoryview | bytes, now: float) -> Output:
        """Process one frame received on `iface` at time `now`; returns what to send where."""
        port = self._ports.get(iface)
        if port is None:
            raise ValueError(f"unknown interface {iface!r}")
        c = self.counters
        c.frames_in += 1
        out: Output = self.poll(now) if now >= self._poll_at else []
        n = len(frame)
        if n < ETH_LEN:
            c.bad_frame += 1
            return out
        if n > port.max_frame:
            c.oversized += 1
            return out
        if type(frame) is bytes:
            frame = bytearray(frame)
        ethertype = frame[12] << 8 | frame[13]
        if ethertype == ETHERTYPE_IPV4:
            if frame[0:6] != port.mac:
                if frame[0] & 1:
                    c.broadcast_dropped += 1
                else:
                    c.not_for_us += 1
                return out
            if not (self._fast and self._fast_forward(port, frame, n, now, out)):
                self._forward(port, frame, n, now, out)
        elif ethertype == ETHERTYPE_ARP:
            self._arp(port, frame, now, out)
        else:
            c.other_ethertype += 1
        return out

    def handle_vnet(self, iface: str, frame: bytearray | memoryview | bytes, now: float) -> Output:
        """`handle` for frames that start with a virtio_net_hdr, as a packet socket with
        PACKET_VNET_HDR gives them; every frame returned starts with one too (see the module
        docstring: super-frames, partial checksums)."""
        port = self._ports.get(iface)
        if port is None:
            raise ValueError(f"unknown interface {iface!r}")
        c = self.counters
        c.frames_in += 1
        out: Output = self.poll(now) if now >= self._poll_at else []
        n = len(frame) - VNET_LEN
        if n < ETH_LEN:
            c.bad_frame += 1
            return self._framed(out, None)
        if type(frame) is bytes:
            frame = bytearray(frame)
        flags, gso_type, _, gso, csum_start, csum_offset = _VNET.unpack_from(frame, 0)
        if gso_type != GSO_NONE:
            if (
                gso_type & ~GSO_ECN != GSO_TCPV4
                or not flags & F_NEEDS_CSUM
                or not gso
                or csum_start != _PAYLOAD_AT  # GRO's: TCP right after a 20-byte IPv4 header
                or csum_offset != TCP_CSUM_OFFSET
            ):
                c.bad_gso += 1
                return self._framed(out, None)
            limit = _GSO_MAX_FRAME
        else:
            gso = 0
            limit = port.max_frame
        if n > limit:
            c.oversized += 1
            return self._framed(out, None)
        whole = memoryview(frame)
        body = whole[VNET_LEN:]
        ethertype = body[12] << 8 | body[13]
        if ethertype == ETHERTYPE_IPV4:
            if body[0:6] != port.mac:
                if body[0] & 1:
                    c.broadcast_dropped += 1
                else:
                    c.not_for_us += 1
                return self._framed(out, None)
            if flags & F_NEEDS_CSUM and not gso:
                if not _complete_csum(body, n, csum_start, csum_offset):
                    c.bad_header += 1
                    return self._framed(out, None)
                c.csum_completed += 1
                frame[0] = flags & ~F_NEEDS_CSUM
            self._rx_vnet = whole
            try:
                if gso or not (self._fast and self._fast_forward(port, body, n, now, out)):
                    self._forward(port, body, n, now, out, gso)
            finally:
                self._rx_vnet = None
        elif ethertype == ETHERTYPE_ARP:
            self._arp(port, body, now, out)
        else:
            c.other_ethertype += 1
        return self._framed(out, whole)

    @staticmethod
    def _framed(out: Output, whole: memoryview | None) -> Output:
        """`handle_vnet`'s output, each frame behind its virtio_net_hdr: the received frame
        (`whole`) rewritten in place keeps its own; a received frame held for ARP was held
        with it (`_transmit`); a frame the engine built gets the all-zero one."""
        rx = None if whole is None else whole.obj
        framed: Output = []
        for egress, f in out:
            if type(f) is memoryview:
                f = whole[: VNET_LEN + len(f)] if f.obj is rx else memoryview(f.obj)  # type: ignore[index]
            else:
                f = bytearray(PLAIN_BYTES) + f
            framed.append((egress, f))
        return framed

    def _arp(self, port: _Port, frame: bytearray | memoryview, now: float, out: Output) -> None:
        try:
            port.arp.receive(memoryview(frame)[ETH_LEN:], now, port.scratch)
        except WireError:
            self.counters.bad_arp += 1
        self._drain(port, out)

    def poll(self, now: float) -> Output:
        """ARP retransmissions due at `now`; gives up (and drops) what waited too long."""
        out: Output = []
        due = float("inf")
        for port in self._ports.values():
            port.arp.poll(now, port.scratch)
            self._drain(port, out)
            t = port.arp.next_timeout()
            if t is not None and t < due:
                due = t
        self._poll_at = due
        return out

    def poll_vnet(self, now: float) -> Output:
        """`poll` for a forwarder driven by `handle_vnet`: its frames behind a virtio_net_hdr."""
        return self._framed(self.poll(now), None)

    def next_timeout(self) -> float | None:
        """When `poll` must run next, or None when nothing waits."""
        return None if self._poll_at == float("inf") else self._poll_at

    def _fast_forward(
        self, port: _Port, frame: bytearray | memoryview, n: int, now: float, out: Output
    ) -> bool:
        """Forward a frame of a cached flow whose header needs no decision (see the module
        docstring); False, having changed nothing, for anything else."""
        if n < _PAYLOAD_AT:
            return False
        ver_ihl, _, total_len, _, flags_frag, ttl, proto, csum, src, dst = _IP_HEADER.unpack_from(
            frame, _IP_AT
        )
        flow = port.flows.get(src << 32 | dst)
        if (
            flow is None
            or ver_ihl != 0x45
            or ttl <= 1
            or flags_frag & (FLAG_MF | FRAG_OFFSET_MASK)
            or not MIN_HEADER_LEN <= total_len <= n - ETH_LEN
        ):
            return False
        egress, dst_mac, until, generation = flow
        if (
            now >= until
            or generation != egress.arp.generation
            or total_len > egress.mtu
            or ones_sum(frame[_IP_AT:_PAYLOAD_AT]) != 0xFFFF
        ):
            return False
        frame[_IP_AT + 8] = ttl - 1
        _U16.pack_into(frame, _IP_AT + 10, update16(csum, ttl << 8 | proto, (ttl - 1) << 8 | proto))
        frame[0:6] = dst_mac
        frame[6:12] = egress.mac
        end = ETH_LEN + total_len
        if n > end:
            frame = _trim(frame, end)
        c = self.counters
        c.forwarded += 1
        c.bytes_forwarded += total_len
        self.fast_hits += 1
        out.append((egress.name, frame))
        return True

    def _remember(self, port: _Port, src: int, dst: int, egress: _Port, next_hop: int) -> None:
        """Cache the flow the full path just sent to a resolved next hop."""
        arp = egress.arp
        known = arp.quiet(next_hop)
        if known is None:
            return
        flows = port.flows
        if len(flows) >= MAX_FLOWS:
            flows.clear()
        flows[src << 32 | dst] = (egress, known[0], known[1], arp.generation)

    def _forward(
        self, port: _Port, frame: bytearray | memoryview, n: int, now: float, out: Output, gso=0
    ) -> None:
        """Route one IPv4 frame; `gso` is a super-frame's segment payload size (0: a frame)."""
        c = self.counters
        if n < _PAYLOAD_AT:
            c.bad_header += 1
            return
        ver_ihl, _, total_len, _, flags_frag, ttl, proto, csum, src, dst = _IP_HEADER.unpack_from(
            frame, _IP_AT
        )
        ihl = (ver_ihl & 0x0F) << 2
        if ver_ihl >> 4 != 4 or ihl < MIN_HEADER_LEN or total_len < ihl or total_len > n - ETH_LEN:
            c.bad_header += 1
            return
        if ones_sum(frame[_IP_AT : _IP_AT + ihl]) != 0xFFFF:
            c.bad_checksum += 1
            return
        if ihl != MIN_HEADER_LEN:
            c.options_dropped += 1
            return
        if src >> 24 in _MARTIAN_SRC_FIRST or src in self._local or src in self._directed:
            c.martian_source += 1
            return
        if dst in self._local:
            c.to_self += 1
            return
        first = dst >> 24
        if 224 <= first < 240 or dst == IPV4_BROADCAST or dst in self._directed:
            c.broadcast_dropped += 1
            return
        if first in _MARTIAN_FIRST:
            c.martian_dest += 1
            return
        if flags_frag & (FLAG_MF | FRAG_OFFSET_MASK):
            data_len = total_len - MIN_HEADER_LEN
            if (flags_frag & FRAG_OFFSET_MASK) * 8 + data_len > MAX_PACKET_LEN - MIN_HEADER_LEN or (
                flags_frag & FLAG_MF and (data_len & 7 or not data_len)
            ):
                c.bad_fragment += 1
                return
        hop = self._table.lookup(dst)
        if hop is None:
            c.no_route += 1
            self._icmp_error(port, frame, TYPE_DST_UNREACHABLE, UNREACH_NET, 0, now, out)
            return
        if ttl <= 1:
            c.ttl_expired += 1
            self._icmp_error(port, frame, TYPE_TIME_EXCEEDED, 0, 0, now, out)
            return
        egress = self._ports[hop.iface]
        if gso:
            if proto != PROTO_TCP or flags_frag & (FLAG_MF | FRAG_OFFSET_MASK):
                c.bad_gso += 1
                return
            # The kernel's skb_gso_validate_network_len: each segment must fit, not the whole.
            tcp_len = (frame[_PAYLOAD_AT + 12] >> 4) << 2 if n >= _PAYLOAD_AT + 13 else 0
            if tcp_len < 20 or MIN_HEADER_LEN + tcp_len > total_len:
                c.bad_gso += 1
                return
            too_big = MIN_HEADER_LEN + tcp_len + gso > egress.mtu
            if too_big and not flags_frag & FLAG_DF:
                c.gso_too_big += 1
                return
        else:
            too_big = total_len > egress.mtu
        if too_big and flags_frag & FLAG_DF:
            c.frag_needed += 1
            self._icmp_error(
                port, frame, TYPE_DST_UNREACHABLE, UNREACH_FRAG_NEEDED, egress.mtu, now, out
            )
            return
        # Committed: rewrite in place. TTL is the high byte of the word at offset 8.
        frame[_IP_AT + 8] = ttl - 1
        _U16.pack_into(frame, _IP_AT + 10, update16(csum, ttl << 8 | proto, (ttl - 1) << 8 | proto))
        frame[6:12] = egress.mac
        end = ETH_LEN + total_len
        if n > end:  # Ethernet padding or trailing junk: the kernel trims it too
            frame = _trim(frame, end)
        c.forwarded += 1
        c.bytes_forwarded += total_len
        if gso:
            c.gso_forwarded += 1
            c.gso_segments += -(-(total_len - MIN_HEADER_LEN - tcp_len) // gso)
        next_hop = dst if hop.gateway is None else hop.gateway
        if not too_big:
            self._transmit(egress, next_hop, frame, now, out)
            if self._fast and not gso:
                self._remember(port, src, dst, egress, next_hop)
            return
        pieces = _fragment(frame, egress.mtu)
        c.fragmented += 1
        c.fragments_out += len(pieces)
        for piece in pieces:
            self._transmit(egress, next_hop, piece, now, out)

    def _transmit(
        self, egress: _Port, next_hop: int, frame: bytearray | memoryview, now: float, out: Output
    ) -> None:
        """Send `frame` (source MAC set) to `next_hop`, or queue it until ARP resolves it."""
        arp = egress.arp
        dst_mac = arp.lookup(next_hop, now, egress.scratch)
        if dst_mac is not None:
            frame[0:6] = dst_mac
            if egress.scratch:  # a refresh probe rides along
                self._drain(egress, out)
            out.append((egress.name, frame))
            return
        # The caller may reuse its buffer once `handle` returns: keep a copy (a received one
        # with its virtio_net_hdr in front, which `_framed` finds again through the view).
        held: bytearray | memoryview = frame  # type: ignore[assignment]
        if type(frame) is not bytearray:
            vnet = self._rx_vnet
            if vnet is None:
                held = bytearray(frame)
            else:
                held = memoryview(bytearray(vnet[:VNET_LEN]) + frame)[VNET_LEN:]
        arp.queue(next_hop, held, now, egress.scratch)  # type: ignore[arg-type]
        self._drain(egress, out)
        due = arp.next_timeout()
        if due is not None and due < self._poll_at:
            self._poll_at = due

    def _icmp_error(
        self,
        ingress: _Port,
        frame: bytearray | memoryview,
        icmp_type: int,
        code: int,
        mtu: int,
        now: float,
        out: Output,
    ) -> None:
        """Answer the (unmodified) datagram in `frame` with an ICMP error, when allowed."""
        c = self.counters
        _, _, total_len, _, flags_frag, _, proto, _, src, _ = _IP_HEADER.unpack_from(frame, _IP_AT)
        if flags_frag & FRAG_OFFSET_MASK or (
            proto == PROTO_ICMP
            and (total_len <= MIN_HEADER_LEN or frame[_PAYLOAD_AT] not in _ICMP_NOT_ERRORS)
        ):
            c.icmp_suppressed += 1
            return
        hop = self._table.lookup(src)
        if hop is None:
            c.icmp_suppressed += 1
            return
        if not self._limiter.take(now):
            c.icmp_rate_limited += 1
            return
        msg = Icmpv4Repr(
            icmp_type,
            code,
            data=bytes(frame[_IP_AT : _IP_AT + min(total_len, MAX_QUOTE_LEN)]),
            next_hop_mtu=mtu,
        )
        self._ident = ident = (self._ident + 1) & 0xFFFF
        ip = Ipv4Repr(
            ingress.addr, src, PROTO_ICMP, msg.buffer_len(), self._ttl, ident, dscp=ICMP_DSCP
        )
        egress = self._ports[hop.iface]
        buf = bytearray(_PAYLOAD_AT + msg.buffer_len())
        EthernetRepr(egress.mac, MAC_ZERO, ETHERTYPE_IPV4).emit(buf, 0)
        ip.emit(buf, _IP_AT)
        msg.emit(buf, _PAYLOAD_AT)
        if icmp_type == TYPE_TIME_EXCEEDED:
            c.icmp_time_exceeded_out += 1
        else:
            c.icmp_unreachable_out += 1
        self._transmit(egress, src if hop.gateway is None else hop.gateway, buf, now, out)

    @staticmethod
    def _drain(port: _Port, out: Output) -> None:
        scratch = port.scratch
        if scratch:
            name = port.name
            out.extend((name, f) for f in scratch)
            scratch.clear()

    # -- introspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Every counter in one flat dict: the forwarder's, then ARP's (see `_FIELDS`)."""
        out = self.counters.as_dict()
        a = self.arp_counters
        drops = a.drops
        out.update(
            arp_in=a.arp_in,
            arp_requests_in=a.arp_requests_in,
            arp_replies_in=a.arp_replies_in,
            arp_requests_out=a.arp_requests_out,
            arp_replies_out=a.arp_replies_out,
            arp_learned=a.arp_learned,
            arp_resolved=a.arp_resolved,
            arp_failed=a.arp_failed,
            arp_spoof_ignored=drops.get("arp:spoof-ignored", 0),
            arp_unsolicited_ignored=drops.get("arp:unsolicited", 0),
            arp_not_for_us=drops.get("arp:not-for-us", 0),
            arp_bad_sender=drops.get("arp:bad-sender", 0),
            arp_address_conflict=drops.get("arp:address-conflict", 0),
            arp_queue_drops=a.arp_queue_drops,
            arp_unresolved_drops=a.arp_unresolved_drops,
            queue_drops=a.arp_queue_drops + a.arp_unresolved_drops,
        )
        return out

    def neighbors(self, iface: str, now: float) -> dict[int, bytes]:
        """Resolved next hops of `iface`: ip -> MAC."""
        return self._ports[iface].arp.entries(now)

    def pending(self, iface: str) -> dict[int, int]:
        """Next hops of `iface` under resolution -> frames waiting for them."""
        return self._ports[iface].arp.pending_hops()


def _complete_csum(frame: memoryview, n: int, start: int, offset: int) -> bool:
    """Fill in a partial TCP/UDP checksum (NEEDS_CSUM: the field holds the pseudo-header
    seed, so the sum over the L4 bytes as they are is the whole sum). False if the offsets
    do not lie inside the datagram."""
    end = ETH_LEN + (_U16.unpack_from(frame, _IP_AT + 2)[0] if n >= _PAYLOAD_AT else 0)
    at = start + offset
    if start < _PAYLOAD_AT or end > n or at + 2 > end:
        return False
    value = checksum(frame[start:end])
    if value == 0 and offset == UDP_CSUM_OFFSET:
        value = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    _U16.pack_into(frame, at, value)
    return True


def _trim(frame: bytearray | memoryview, end: int) -> bytearray | memoryview:
    if type(frame) is bytearray:
        try:
            del frame[end:]
            return frame
        except BufferError:  # someone holds a view of it: cannot resize
            pass
    return memoryview(frame)[:end]


def _fragment(frame: bytearray | memoryview, mtu: int) -> list[bytearray]:
    """Cut the forwarded frame (20-byte header, already rewritten) into MTU-sized frames.

    RFC 791: every piece but the last carries a multiple of 8 data bytes; offsets continue
    from the datagram's own (it may itself be a fragment) and the last piece keeps its MF.
    """
    flags_frag = _U16.unpack_from(frame, _IP_AT + 6)[0]
    base = (flags_frag & FRAG_OFFSET_MASK) << 3
    last_mf = flags_frag & FLAG_MF
    keep = flags_frag & _FLAG_RESERVED
    head = bytes(frame[:_PAYLOAD_AT])
    data = memoryview(frame)[_PAYLOAD_AT:]
    total = len(data)
    chunk = (mtu - MIN_HEADER_LEN) & ~7
    pieces = []
    for offset in range(0, total, chunk):
        piece = data[offset : offset + chunk]
        more = FLAG_MF if offset + chunk < total else last_mf
        buf = bytearray(_PAYLOAD_AT + len(piece))
        buf[:_PAYLOAD_AT] = head
        buf[_PAYLOAD_AT:] = piece
        _U16.pack_into(buf, _IP_AT + 2, MIN_HEADER_LEN + len(piece))
        _U16.pack_into(buf, _IP_AT + 6, keep | more | (base + offset) >> 3)
        buf[_IP_AT + 10 : _IP_AT + 12] = b"\x00\x00"
        _U16.pack_into(buf, _IP_AT + 10, checksum(buf[_IP_AT:_PAYLOAD_AT]))
        pieces.append(buf)
    data.release()
    return pieces

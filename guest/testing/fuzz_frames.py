"""The fuzzers' frame factory: valid frames of every protocol aimed at a live stack, mutated.

`FrameFactory` draws one fuzz `Case` (a frame, or a burst) per call from a seeded
`random.Random`, through one of the `MUTATORS`: random bytes, plausible headers over random
bytes, or a valid frame of one of the `PROTOCOLS` built with the wire layer's own `emit`
functions and aimed at the live state of the attacked stack (its connections' 4-tuples with
plausible and implausible sequence numbers, its listener's backlog, a pending ARP resolution,
fragments in reassembly, frames its peer really sent), then bit-flipped, overwritten at field
boundaries, truncated, lied about in its length fields, oversized, fragmented or flooded.
`refresh_checksums` lets a lie reach the layer it is aimed at instead of dying at a checksum.

What the factory aims at is a `FuzzTarget` on the two-stack simulator's addresses
(`guest.testing.stack_sim`): the attacked stack A, its honest peer B, and the hosts, ports and
connections defined here. The long fuzz benchmark (`guest.bench.fuzz`) is one; tests import
the mutators and addresses from here too. Same seed, same frames.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Final, Protocol

from guest.stack.core.netstack import NetStack
from guest.stack.core.tcp_mux import TcpSocket
from guest.stack.wire.addr import MAC_BROADCAST, MAC_ZERO, ipv4, ipv4_str
from guest.stack.wire.arp import OP_REPLY, OP_REQUEST, ArpRepr
from guest.stack.wire.checksum import fold, pseudo_header_sum, raw_sum
from guest.stack.wire.errors import WireError
from guest.stack.wire.ethernet import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_VLAN,
    EthernetRepr,
)
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN
from guest.stack.wire.frame import emit_tcp_frame, emit_udp_frame, tcp_payload_offset
from guest.stack.wire.icmp import (
    TYPE_DST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    TYPE_TIME_EXCEEDED,
    Icmpv4Packet,
    Icmpv4Repr,
)
from guest.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Packet, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpPacket, TcpRepr
from guest.stack.wire.udp import UdpRepr
from guest.testing.stack_sim import IP_A, IP_B, MAC_A, MAC_B

#: Mutators and their weights: how each fuzz case is made.
MUTATORS: Final[dict[str, int]] = {
    "random-bytes": 8,  # pure random bytes of random length (0..9000)
    "random-l2": 7,  # a plausible Ethernet (and sometimes IPv4) header, random payload
    "valid": 14,  # a valid frame of some protocol, aimed at the live state, unmutated
    "bitflip": 12,  # a valid frame with bits flipped
    "boundary": 10,  # a valid frame with bytes overwritten by 0, 0xff, 0x7f, 0x80, ...
    "truncate": 10,  # a valid frame cut at (or next to) a header boundary
    "length-lie": 12,  # IPv4 total length, IHL, TCP data offset, option, UDP, ARP lengths
    "oversize": 5,  # far above the MTU, as GRO hands them over, or padded past Total Length
    "fragment": 3,  # fragment trains (several frames): overlapping, beyond 64 KiB, missing
    "peer-replay": 12,  # a frame B really sent, replayed as is or with shifted seq/ack/flags
    "flood": 1,  # bursts (16-128 frames) piling up state: 1-byte out-of-order segments, ...
}
#: What the valid-frame mutators start from.
PROTOCOLS: Final[dict[str, int]] = {
    "arp": 8,
    "icmp-echo": 7,
    "icmp-error": 10,
    "udp": 12,
    "ip-proto": 3,
    "tcp": 60,
}

A_IP: Final = ipv4(IP_A)
B_IP: Final = ipv4(IP_B)
SUBNET: Final = A_IP & 0xFFFFFF00
SUBNET_BROADCAST: Final = SUBNET | 0xFF
GATEWAY: Final = SUBNET | 254
#: A host that never answers: A's probing connection to it sits in SYN-SENT behind ARP.
SILENT_IP: Final = SUBNET | 99
#: B listens here; A's live connection goes to it.
LIVE_PORT: Final = 5001
#: B's second listener, whose connections negotiate no options (no timestamps, SACK or window
#: scaling): A's end then has no PAWS and samples RTT the classic way.
PLAIN_PORT: Final = 5002
#: A's listener (the attacked one, with a small backlog that SYN floods fill).
LISTEN_PORT: Final = 80
LISTEN_BACKLOG: Final = 8
UDP_PORT: Final = 5353
PING_IDENT: Final = 4242
PROBE_PORT: Final = 7
#: A peer the fuzz controls completely: it opens a connection to A's listener and floods it.
#: Nobody honest ever fills the gaps it leaves, so state piles up as in a real attack.
ATTACKER_IP: Final = SUBNET | 66
ATTACKER_STR: Final = ipv4_str(ATTACKER_IP)

_MASK: Final = 0xFFFFFFFF
_BOUNDARY_VALUES: Final = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)
_RANDOM_LENGTHS: Final = (0, 1, 13, 14, 15, 33, 34, 35, 41, 42, 53, 54, 60, 64, 1514, 1518, 9000)


@dataclass(slots=True)
class Built:
    """A valid frame and where its headers are, so that mutations can aim at fields."""

    kind: str
    frame: bytearray
    l3: int | None = None  # IPv4 or ARP header offset
    l4: int | None = None  # transport header offset
    proto: int | None = None
    l4_hlen: int = 0  # TCP header length with options; 8 for UDP and ICMP
    opt_lens: tuple[int, ...] = ()  # offsets (from l4) of TCP option length bytes

    @property
    def header_end(self) -> int:
        """End of the headers: where mutations aimed at fields should land."""
        if self.l4 is not None:
            return min(len(self.frame), self.l4 + max(self.l4_hlen, 8))
        if self.l3 is not None:
            return min(len(self.frame), self.l3 + 28)
        return min(len(self.frame), ETH_LEN)


@dataclass(slots=True)
class Case:
    """One fuzz step's input: frames fed to A back to back."""

    mutator: str
    kind: str
    frames: list[bytes]
    checksum_ok: bool


def refresh_checksums(frame: bytearray) -> None:
    """Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum of a mutated frame, as
    far as its (possibly lying) length fields allow, so that the lie reaches the layer it is
    aimed at instead of dying at a checksum. Never raises."""
    n = len(frame)
    if n < ETH_LEN + 20 or frame[12:14] != b"\x08\x00":
        return
    ihl = (frame[ETH_LEN] & 0x0F) * 4
    if ihl < 20 or ETH_LEN + ihl > n:
        return
    with memoryview(frame) as view:
        Ipv4Packet(view[ETH_LEN : ETH_LEN + ihl]).fill_checksum()
        total = int.from_bytes(view[ETH_LEN + 2 : ETH_LEN + 4], "big")
        if total < ihl or ETH_LEN + total > n or int.from_bytes(view[20:22], "big") & 0x3FFF:
            return  # no L4 extent to trust, or a fragment (its checksum spans the datagram)
        proto = frame[ETH_LEN + 9]
        src = int.from_bytes(view[26:30], "big")
        dst = int.from_bytes(view[30:34], "big")
        seg = view[ETH_LEN + ihl : ETH_LEN + total]
        if proto == PROTO_TCP and len(seg) >= 20:
            TcpPacket(seg).fill_checksum(src, dst)
        elif proto == PROTO_UDP and len(seg) >= 8:
            length = int.from_bytes(seg[4:6], "big")
            if 8 <= length <= len(seg) and seg[6:8] != b"\x00\x00":
                seg[6:8] = b"\x00\x00"
                total_sum = raw_sum(seg[:length]) + pseudo_header_sum(src, dst, PROTO_UDP, length)
                value = ~fold(total_sum) & 0xFFFF
                seg[6:8] = (value or 0xFFFF).to_bytes(2, "big")
        elif proto == PROTO_ICMP and len(seg) >= 4:
            Icmpv4Packet(seg).fill_checksum()
        del seg


def unicast_mac(rng: random.Random) -> bytes:
    return bytes([(rng.getrandbits(8) & 0xFC) | 0x02]) + rng.randbytes(5)


def pool_mac(ip: int) -> bytes:
    return bytes([0x52, 0x54, 0x00, 0xCC, (ip >> 8) & 0xFF, ip & 0xFF])


def tcp_option_lengths(header: bytes | bytearray) -> tuple[int, ...]:
    """Offsets (from the TCP header) of the length bytes of the options we emitted."""
    out = []
    i = 20
    end = (header[12] >> 4) * 4
    while i + 1 < end:
        kind = header[i]
        if kind in (0, 1):
            i += 1
            continue
        out.append(i + 1)
        i += max(header[i + 1], 2)
    return tuple(out)


class CapturedPeer(Protocol):
    """Where the last frames the honest peer B sent are kept, for the peer-replay mutator."""

    @property
    def from_b(self) -> deque[bytes]: ...


class FuzzTarget(Protocol):
    """What `FrameFactory` aims at (`guest.bench.fuzz.bench.FuzzBench` is one): the attacked
    stack A, its live, probing and attacker connections, and the last frames its peer sent."""

    attacker_next: int  # where the attacker's next burst of out-of-order bytes goes

    @property
    def a(self) -> NetStack: ...

    @property
    def net(self) -> CapturedPeer: ...

    def live_socket(self) -> TcpSocket | None: ...

    def probe_socket(self) -> TcpSocket | None: ...

    def attacker_socket(self) -> TcpSocket | None: ...


class FrameFactory:
    """Valid frames of every protocol, aimed at the live state of stack A, and their mutations.

    Every frame is built with the wire layer's `emit` functions; mutations then work on bytes.
    """

    def __init__(self, rng: random.Random, bench: FuzzTarget) -> None:
        self.rng = rng
        self.bench = bench
        self.stack = bench.a
        self._mutators = list(MUTATORS)
        self._mutator_weights = list(MUTATORS.values())
        self._protocols = list(PROTOCOLS)
        self._protocol_weights = list(PROTOCOLS.values())
        self._idents = [rng.getrandbits(16) for _ in range(8)]

    # ------------------------------------------------------------------ cases

    def case(self) -> Case:
        r = self.rng
        mutator = r.choices(self._mutators, self._mutator_weights)[0]
        checksum_ok = r.random() < 0.5
        if mutator == "random-bytes":
            return Case(mutator, "random", [self._random_bytes()], checksum_ok)
        if mutator == "random-l2":
            kind, frame = self._random_l2()
            return Case(mutator, kind, [frame], checksum_ok)
        if mutator == "fragment":
            kind, frames = self.fragments()
            return Case(mutator, kind, frames, checksum_ok)
        if mutator == "oversize":
            kind, frame = self.oversize()
            return Case(mutator, kind, [frame], checksum_ok)
        if mutator == "peer-replay":
            kind, frame = self.peer_replay()
            return Case(mutator, kind, [frame], checksum_ok)
        if mutator == "flood":
            kind, frames = self.flood()
            return Case(mutator, kind, frames, checksum_ok)
        built = self.valid()
        if mutator == "bitflip":
            self._bitflip(built)
        elif mutator == "boundary":
            self._boundary(built)
        elif mutator == "truncate":
            self._truncate(built)
        elif mutator == "length-lie":
            self._length_lie(built)
        return Case(mutator, built.kind, [bytes(built.frame)], checksum_ok)

    def _random_bytes(self) -> bytes:
        r = self.rng
        c = r.random()
        if c < 0.4:
            n = r.randint(0, 64)
        elif c < 0.7:
            n = r.randint(65, 1514)
        elif c < 0.9:
            n = r.randint(1515, 9000)
        else:
            n = r.choice(_RANDOM_LENGTHS)
        return r.randbytes(n)

    def _random_l2(self) -> tuple[str, bytes]:
        """Our MAC (or broadcast) and a real EtherType in front of random bytes; for IPv4 often a
        believable first word and addresses, so that random bytes reach the transport parsers."""
        r = self.rng
        dst = MAC_A if r.random() < 0.85 else MAC_BROADCAST
        ethertype = r.choices(
            [ETHERTYPE_IPV4, ETHERTYPE_ARP, ETHERTYPE_IPV6, ETHERTYPE_VLAN, 0, 0x05DC, -1],
            [50, 20, 5, 5, 3, 3, 14],
        )[0]
        if ethertype < 0:
            ethertype = r.getrandbits(16)
        n = r.randint(0, 1500) if r.random() < 0.9 else r.randint(1501, 9000)
        frame = bytearray(ETH_LEN + n)
        EthernetRepr(unicast_mac(r), dst, ethertype).emit(frame, 0)
        frame[ETH_LEN:] = r.randbytes(n)
        kind = "random-l2"
        if ethertype == ETHERTYPE_IPV4 and n >= 20 and r.random() < 0.6:
            kind = "random-l4"
            frame[ETH_LEN] = 0x45
            frame[ETH_LEN + 2 : ETH_LEN + 4] = n.to_bytes(2, "big")
            frame[ETH_LEN + 6 : ETH_LEN + 8] = b"\x00\x00"  # not a fragment
            frame[ETH_LEN + 9] = r.choice([PROTO_TCP, PROTO_UDP, PROTO_ICMP])
            frame[ETH_LEN + 12 : ETH_LEN + 16] = self._src_ip().to_bytes(4, "big")
            frame[ETH_LEN + 16 : ETH_LEN + 20] = A_IP.to_bytes(4, "big")
            refresh_checksums(frame)
        return kind, bytes(frame)

    # ------------------------------------------------------------------ addresses

    def _src_ip(self) -> int:
        r = self.rng
        c = r.random()
        if c < 0.3:
            return B_IP
        if c < 0.6:
            return SUBNET | r.randint(3, 40)
        if c < 0.75:
            return r.choice([ipv4("10.1.2.3"), ipv4("192.0.2.77"), ipv4("203.0.113.9")])
        if c < 0.85:
            return r.choice(
                [A_IP, 0xFFFFFFFF, ipv4("224.0.0.5"), 0, SUBNET_BROADCAST, ipv4("127.0.0.1")]
            )
        return r.getrandbits(32)

    def _dst_ip(self) -> int:
        r = self.rng
        c = r.random()
        if c < 0.86:
            return A_IP
        if c < 0.91:
            return SUBNET_BROADCAST
        if c < 0.95:
            return 0xFFFFFFFF
        if c < 0.98:
            return SUBNET | r.randint(2, 254)
        return r.getrandbits(32)

    def _dst_mac(self) -> bytes:
        r = self.rng
        c = r.random()
        if c < 0.88:
            return MAC_A
        if c < 0.95:
            return MAC_BROADCAST
        if c < 0.97:
            return bytes.fromhex("01005e000005")
        return unicast_mac(r)

    def _src_mac(self, ip: int) -> bytes:
        if ip == B_IP:
            return MAC_B
        if ip & 0xFFFFFF00 == SUBNET:
            return pool_mac(ip)
        return unicast_mac(self.rng)

    # ------------------------------------------------------------------ building blocks

    def _ip_options(self) -> bytes:
        """IPv4 options (never interpreted by the stack, only skipped by IHL)."""
        r = self.rng
        pick = r.randrange(6)
        if pick == 0:
            opts = b"\x94\x04\x00\x00"  # router alert
        elif pick == 1:
            n = r.choice([3, 7, 11, 39])
            opts = bytes([7, n, 4]) + bytes(n - 3)  # record route
        elif pick == 2:
            opts = bytes([68, 12, 5, 0]) + bytes(8)  # timestamp
        elif pick == 3:
            opts = b"\x01" * r.randint(1, 7) + b"\x00"
        elif pick == 4:
            opts = r.randbytes(r.choice([4, 8, 40]))
        else:
            opts = r.choice([b"\x07\x00", b"\x07\xff", b"\x44\x01", b"\x83"])  # bad lengths
        opts = opts[:40]
        return opts + bytes(-len(opts) % 4)

    def build_ipv4(
        self,
        kind: str,
        ip: Ipv4Repr,
        l4: bytes | bytearray,
        *,
        src_mac: bytes | None = None,
        dst_mac: bytes | None = None,
        options: bytes = b"",
    ) -> Built:
        """Ethernet + IPv4 (with `options`, IHL and checksum fixed up) + `l4` bytes."""
        hl = 20 + len(options)
        buf = bytearray(ETH_LEN + hl + len(l4))
        eth_src = src_mac if src_mac is not None else self._src_mac(ip.src_addr)
        eth_dst = dst_mac if dst_mac is not None else self._dst_mac()
        EthernetRepr(eth_src, eth_dst, ETHERTYPE_IPV4).emit(buf, 0)
        ip.payload_len = len(options) + len(l4)
        ip.emit(buf, ETH_LEN)
        if options:
            buf[ETH_LEN] = 0x40 | (hl >> 2)
            buf[ETH_LEN + 20 : ETH_LEN + hl] = options
            with memoryview(buf) as view:
                Ipv4Packet(view[ETH_LEN:]).fill_checksum()
        buf[ETH_LEN + hl :] = l4
        return Built(kind, buf, ETH_LEN, ETH_LEN + hl, ip.protocol)

    def _ip_header(self, src: int, dst: int, proto: int) -> Ipv4Repr:
        r = self.rng
        return Ipv4Repr(
            src,
            dst,
            proto,
            0,
            ttl=r.choice([64, 1, 0, 255]),
            ident=r.getrandbits(16),
            dont_frag=r.random() < 0.5,
            dscp=r.getrandbits(6) if r.random() < 0.1 else 0,
            ecn=r.getrandbits(2) if r.random() < 0.1 else 0,
        )

    def _maybe_options(self) -> bytes:
        return self._ip_options() if self.rng.random() < 0.15 else b""

    # ------------------------------------------------------------------ valid frames

    def valid(self) -> Built:
        """A valid frame of a protocol chosen by `PROTOCOLS`."""
        proto = self.rng.choices(self._protocols, self._protocol_weights)[0]
        if proto == "arp":
            return self.arp()
        if proto == "icmp-echo":
            return self.icmp_echo()
        if proto == "icmp-error":
            return self.icmp_error()
        if proto == "udp":
            return self.udp()
        if proto == "ip-proto":
            return self.ip_other()
        return self.tcp()

    def arp(self) -> Built:
        r = self.rng
        op = OP_REQUEST if r.random() < 0.55 else OP_REPLY
        if r.random() < 0.03:
            op = r.choice([0, 3, 4, 0xFFFF])
        who = r.random()
        if who < 0.25:
            spa, sha = B_IP, MAC_B  # the peer refreshing itself
        elif who < 0.55:
            spa = SUBNET | r.randint(3, 40)
            sha = pool_mac(spa)
        elif who < 0.65:
            spa, sha = SILENT_IP, unicast_mac(r)  # resolves the probe's pending next hop
        elif who < 0.72:
            spa, sha = GATEWAY, unicast_mac(r)
        elif who < 0.80:
            spa, sha = 0, unicast_mac(r)  # RFC 5227 probe
        elif who < 0.86:
            spa, sha = A_IP, r.choice([unicast_mac(r), MAC_A])  # address conflict
        elif who < 0.87:
            spa, sha = B_IP, unicast_mac(r)  # poisoning (healed by B's announcements)
        else:
            spa = r.getrandbits(32)
            sha = r.randbytes(6)  # may be a group address
        c = r.random()
        tpa = A_IP if c < 0.7 else (SUBNET | r.randint(1, 254) if c < 0.9 else r.getrandbits(32))
        tha = MAC_ZERO if op == OP_REQUEST else r.choice([MAC_A, MAC_ZERO, unicast_mac(r)])
        dst = MAC_BROADCAST if op == OP_REQUEST and r.random() < 0.7 else self._dst_mac()
        buf = bytearray(ETH_LEN + 28)
        EthernetRepr(sha, dst, ETHERTYPE_ARP).emit(buf, 0)
        ArpRepr(op, sha, spa, tha, tpa).emit(buf, ETH_LEN)
        return Built("arp", buf, ETH_LEN)

    def _echo_data(self) -> bytes:
        r = self.rng
        c = r.random()
        n = r.randint(0, 64) if c < 0.7 else (r.randint(65, 1472) if c < 0.95 else 2000)
        return r.randbytes(n)

    def icmp_echo(self) -> Built:
        r = self.rng
        request = r.random() < 0.7
        mtype = TYPE_ECHO_REQUEST if request else TYPE_ECHO_REPLY
        ident = PING_IDENT if not request and r.random() < 0.6 else r.getrandbits(16)
        code = 0 if r.random() < 0.95 else r.getrandbits(8)
        msg = Icmpv4Repr(mtype, code, ident, r.getrandbits(16), self._echo_data())
        l4 = bytearray(msg.buffer_len())
        msg.emit(l4, 0)
        ip = self._ip_header(self._src_ip(), self._dst_ip(), PROTO_ICMP)
        built = self.build_ipv4("icmp-echo", ip, l4, options=self._maybe_options())
        built.l4_hlen = 8
        return built

    def _quote(self) -> bytes:
        """The offending datagram an ICMP error quotes: mostly one A could have sent."""
        r = self.rng
        bench = self.bench
        c = r.random()
        src = A_IP if r.random() < 0.85 else self._src_ip()
        live = bench.live_socket()
        probe = bench.probe_socket()
        if c < 0.35 and live is not None:
            conn = live.conn
            seq = r.choice([conn.snd_una, conn.snd_nxt, conn.iss, r.getrandbits(32)]) & _MASK
            seg = TcpRepr(
                live.local_port, live.remote_port, seq, conn.rcv_nxt & _MASK, TcpFlags.ACK, 512
            )
            proto, dst, body = PROTO_TCP, B_IP, self._tcp_bytes(seg, src, B_IP)
        elif c < 0.5 and probe is not None:
            iss = probe.conn.iss if r.random() < 0.8 else r.getrandbits(32)
            seg = TcpRepr(probe.local_port, PROBE_PORT, iss, 0, TcpFlags.SYN, 65535, mss=1460)
            proto, dst, body = PROTO_TCP, SILENT_IP, self._tcp_bytes(seg, src, SILENT_IP)
        elif c < 0.65:
            udp = UdpRepr(UDP_PORT, r.choice([9, 53, r.getrandbits(16)]), r.randbytes(16))
            body = bytearray(udp.buffer_len())
            udp.emit(body, 0, src, B_IP)
            proto, dst = PROTO_UDP, B_IP
        elif c < 0.75:
            echo = Icmpv4Repr(TYPE_ECHO_REQUEST, 0, PING_IDENT, 1, b"ping")
            body = bytearray(echo.buffer_len())
            echo.emit(body, 0)
            proto, dst = PROTO_ICMP, B_IP
        else:
            proto, dst, body = r.getrandbits(8), r.getrandbits(32), bytearray(r.randbytes(24))
        quote = bytearray(20 + len(body))
        Ipv4Repr(src, dst, proto, len(body), ident=r.getrandbits(16)).emit(quote, 0)
        quote[20:] = body
        c = r.random()
        if c < 0.6:
            return bytes(quote[:28])
        if c < 0.9:
            return bytes(quote)
        return bytes(quote[: 20 + r.randint(0, 7)])  # shorter than RFC 792's 64 bits

    def icmp_error(self) -> Built:
        r = self.rng
        quote = self._quote()
        c = r.random()
        if c < 0.7:
            mtype = TYPE_DST_UNREACHABLE
            code = r.choice([0, 1, 2, 3, 4, 13]) if r.random() < 0.8 else r.randint(0, 15)
        elif c < 0.85:
            mtype, code = TYPE_TIME_EXCEEDED, r.randint(0, 1)
        else:
            mtype, code = r.choice([4, 5, 12, 13, 14, 17, r.getrandbits(8)]), r.getrandbits(8)
        mtu = r.choice([0, 68, 576, 1280, 1500, 0xFFFF])
        msg = Icmpv4Repr(mtype, code, data=quote, next_hop_mtu=mtu)
        l4 = bytearray(msg.buffer_len())
        msg.emit(l4, 0)
        src = B_IP if r.random() < 0.5 else self._src_ip()
        ip = self._ip_header(src, self._dst_ip(), PROTO_ICMP)
        built = self.build_ipv4("icmp-error", ip, l4, options=self._maybe_options())
        built.l4_hlen = 8
        return built

    def udp(self) -> Built:
        r = self.rng
        c = r.random()
        dport = (
            UDP_PORT if c < 0.55 else (r.getrandbits(16) if c < 0.9 else r.choice([0, 9, 53, 5001]))
        )
        sport = r.choice([r.getrandbits(16), 0, 53, 5353])
        c = r.random()
        n = r.randint(0, 64) if c < 0.6 else (r.randint(65, 1472) if c < 0.97 else 4000)
        src = self._src_ip()
        dst = self._dst_ip()
        seg = UdpRepr(sport, dport, r.randbytes(n))
        l4 = bytearray(seg.buffer_len())
        seg.emit(l4, 0, src, dst, compute_checksum=r.random() > 0.1)  # 0: "no checksum"
        built = self.build_ipv4("udp", self._ip_header(src, dst, PROTO_UDP), l4)
        built.l4_hlen = 8
        return built

    def ip_other(self) -> Built:
        r = self.rng
        proto = r.choice([0, 2, 4, 41, 47, 50, 51, 89, 132, 255])
        ip = self._ip_header(self._src_ip(), self._dst_ip(), proto)
        return self.build_ipv4("ip-proto", ip, r.randbytes(r.randint(0, 200)), options=b"")

    # ------------------------------------------------------------------ TCP

    def _seq_for(self, sock: TcpSocket, harmful: bool = False) -> int:
        """A sequence number for a segment to `sock`: in the window, at its edges, old, far.

        `harmful` segments (data, RST, FIN) land in the window less often: each one that does
        injects bytes or ends the connection (TCP cannot tell), and the live connection must
        then be replaced, which would keep it too young to build up the state (SACK holes,
        recovery, large windows) worth attacking.
        """
        r = self.rng
        conn = sock.conn
        rcv = conn.rcv_nxt
        wnd = max(conn.rcv_adv - rcv, 0)
        c = r.random()
        if harmful and c < 0.3 and r.random() < 0.95:
            c = 0.3 + r.random() * 0.7
        if c < 0.06:
            seq = rcv
        elif c < 0.3:
            seq = rcv + r.randint(0, max(wnd, 1))
        elif c < 0.5:
            seq = rcv - r.randint(1, 1 << 17)
        elif c < 0.65:
            seq = rcv + wnd + r.randint(1, 1 << 20)
        elif c < 0.75:
            seq = conn.irs
        else:
            seq = r.getrandbits(32)
        return seq & _MASK

    def _ack_for(self, sock: TcpSocket) -> int:
        r = self.rng
        conn = sock.conn
        una, top = conn.snd_una, conn.snd_max
        c = r.random()
        if c < 0.25:
            ack = una
        elif c < 0.45:
            ack = r.randint(una, top)
        elif c < 0.6:
            ack = top + r.randint(1, 1 << 16)
        elif c < 0.72:
            ack = una - r.randint(1, conn.max_snd_wnd + 2)
        elif c < 0.8:
            ack = conn.iss + 1
        else:
            ack = r.getrandbits(32)
        return ack & _MASK

    def _sack_blocks(self, sock: TcpSocket | None) -> tuple[tuple[int, int], ...]:
        r = self.rng
        blocks = []
        for _ in range(r.randint(1, 4)):
            if sock is not None and r.random() < 0.7:
                conn = sock.conn
                left = r.randint(conn.snd_una - 100, conn.snd_max + 100)
                right = left + r.choice([1, 8, 536, 1448, 4096, r.randint(-2000, 1 << 16)])
            else:
                left, right = r.getrandbits(32), r.getrandbits(32)
            blocks.append((left & _MASK, right & _MASK))
        return tuple(blocks)

    def _tcp_target(self) -> tuple[str, int, int, int, TcpSocket | None]:
        """(kind, source ip, source port, destination port, connection aimed at)."""
        r = self.rng
        c = r.random()
        live = self.bench.live_socket()
        conns = self.stack.tcp.conns
        if c < 0.45 and live is not None:
            return "tcp-live", live.remote_ip, live.remote_port, live.local_port, live
        if c < 0.62:
            src = B_IP if r.random() < 0.2 else self._src_ip()
            return "tcp-listen", src, r.getrandbits(16), LISTEN_PORT, None
        if c < 0.77 and conns:
            sock = r.choice(list(conns.values()))
            return "tcp-conn", sock.remote_ip, sock.remote_port, sock.local_port, sock
        if c < 0.9:
            port = r.getrandbits(16)
            return "tcp-closed", self._src_ip(), r.getrandbits(16), port, None
        return "tcp-random", r.getrandbits(32), r.getrandbits(16), r.getrandbits(16), None

    def _tcp_flags(self, kind: str) -> int:
        r = self.rng
        if r.random() < 0.4:
            return r.getrandbits(8)  # every combination, eventually
        common = [0x10, 0x18, 0x02, 0x12, 0x04, 0x14, 0x11, 0x01, 0x30, 0x00, 0x19]
        if kind == "tcp-listen" and r.random() < 0.6:
            return 0x02
        return r.choice(common)

    def _tcp_payload(self) -> bytes:
        r = self.rng
        c = r.random()
        if c < 0.55:
            return b""
        if c < 0.85:
            return r.randbytes(r.randint(1, 1448))
        if c < 0.95:
            return r.randbytes(r.randint(1, 16))
        return r.randbytes(r.randint(1449, 9000))

    def tcp_repr(self) -> tuple[str, int, int, TcpRepr]:
        """(kind, source ip, destination ip, segment) aimed by `_tcp_target`."""
        r = self.rng
        kind, src, sport, dport, sock = self._tcp_target()
        dst = A_IP if r.random() < 0.95 else self._dst_ip()
        flags = self._tcp_flags(kind)
        payload = self._tcp_payload()
        if sock is not None:
            seq = self._seq_for(sock, bool(payload) or bool(flags & 0x05))
            ack = self._ack_for(sock)
        else:
            seq, ack = r.getrandbits(32), r.getrandbits(32)
        c = r.random()
        window = 0 if c < 0.2 else (0xFFFF if c < 0.4 else r.getrandbits(16))
        syn = bool(flags & 0x02)
        seg = TcpRepr(
            sport,
            dport,
            seq,
            ack,
            TcpFlags(flags),
            window,
            payload=payload,
            urgent=r.getrandbits(16) if r.random() < 0.05 else 0,
        )
        if r.random() < (0.8 if syn else 0.15):
            seg.mss = r.choice([536, 1460, 1448, 0, 1, 47, 48, 65535, r.getrandbits(16)])
        if r.random() < (0.6 if syn else 0.1):
            seg.window_scale = r.randint(0, 14)
        if r.random() < (0.6 if syn else 0.1):
            seg.sack_permitted = True
        if r.random() < 0.8:
            # The TSval A's connection last saw (`_ts_recent`: no public accessor exists), so
            # that PAWS lets plausible segments through; sometimes anything.
            recent = getattr(sock.conn, "_ts_recent", 0) if sock is not None else 0
            tsval = recent + r.randint(-50, 300) if r.random() < 0.8 else r.getrandbits(32)
            seg.timestamp = (tsval & _MASK, r.getrandbits(32) if r.random() < 0.5 else 0)
        if r.random() < 0.3:
            seg.sack_blocks = self._sack_blocks(sock)
        while True:  # at most 40 bytes of options: drop SACK blocks until they fit
            try:
                seg.header_len()
                break
            except WireError:
                seg.sack_blocks = seg.sack_blocks[:-1]
        return kind, src, dst, seg

    @staticmethod
    def _tcp_bytes(seg: TcpRepr, src: int, dst: int) -> bytearray:
        buf = bytearray(seg.buffer_len())
        seg.emit(buf, 0, src, dst)
        return buf

    def build_tcp(
        self,
        kind: str,
        src: int,
        dst: int,
        seg: TcpRepr,
        options: bytes,
        dst_mac: bytes | None = None,
    ) -> Built:
        """Ethernet + IPv4 (with `options`) + `seg` from `src` to `dst`, and where the TCP
        options' length bytes are (for the length-lie mutator)."""
        l4 = self._tcp_bytes(seg, src, dst)
        ip = self._ip_header(src, dst, PROTO_TCP)
        built = self.build_ipv4(kind, ip, l4, dst_mac=dst_mac, options=options)
        built.l4_hlen = seg.header_len()
        built.opt_lens = tcp_option_lengths(l4[: built.l4_hlen])
        return built

    def tcp(self) -> Built:
        kind, src, dst, seg = self.tcp_repr()
        return self.build_tcp(kind, src, dst, seg, self._maybe_options())

    # ------------------------------------------------------------------ mutations

    def _positions(self, built: Built, count: int) -> Iterator[int]:
        """Byte offsets to mutate: mostly within the headers."""
        r = self.rng
        n = len(built.frame)
        if not n:
            return
        head = built.header_end
        for _ in range(count):
            yield r.randrange(head) if head and r.random() < 0.75 else r.randrange(n)

    def _bitflip(self, built: Built) -> None:
        frame = built.frame
        for i in self._positions(built, self.rng.randint(1, 8)):
            frame[i] ^= 1 << self.rng.randrange(8)
        if self.rng.random() < 0.4:
            refresh_checksums(frame)

    def _boundary(self, built: Built) -> None:
        frame = built.frame
        for i in self._positions(built, self.rng.randint(1, 4)):
            frame[i] = self.rng.choice(_BOUNDARY_VALUES)
        if self.rng.random() < 0.5:
            refresh_checksums(frame)

    def _truncate(self, built: Built) -> None:
        """Cut at a header boundary (+-1); half of the time with IPv4 Total Length and the
        checksums fixed up, so that the short header reaches its own parser."""
        r = self.rng
        frame = built.frame
        cuts = [0, 1, 6, 12, 13, 14]
        l3, l4 = built.l3, built.l4
        if l3 is not None:
            cuts += [l3 + 1, l3 + 4, l3 + 8, l3 + 19, l3 + 20, l3 + 27, l3 + 28]
        if l4 is not None:
            hl = built.l4_hlen
            cuts += [l4, l4 + 1, l4 + 4, l4 + 7, l4 + 8, l4 + 12, l4 + 13, l4 + 19, l4 + 20]
            cuts += [l4 + hl - 1, l4 + hl, l4 + hl + 1]
            cuts += [l4 + at - 1 for at in built.opt_lens] + [l4 + at for at in built.opt_lens]
            cuts += [l4 + 8 + 20, l4 + 8 + 27]  # an ICMP error's quote: header, 8 bytes
        cuts += [len(frame) - 1, len(frame) // 2]
        cut = max(0, min(len(frame), r.choice(cuts) + r.choice([-1, 0, 0, 0, 1])))
        del frame[cut:]
        if l4 is not None and cut >= ETH_LEN + 20 and r.random() < 0.5:
            frame[ETH_LEN + 2 : ETH_LEN + 4] = (cut - ETH_LEN).to_bytes(2, "big")
            refresh_checksums(frame)

    def _length_lie(self, built: Built) -> None:
        r = self.rng
        frame = built.frame
        l3, l4 = built.l3, built.l4
        fields_: list[str] = []
        if built.proto is not None:
            fields_ += ["ip-total", "ip-ihl"]
        elif l3 is not None:
            fields_ += ["arp-hlen", "arp-plen"]
        if built.proto == PROTO_TCP:
            fields_ += ["tcp-doff", "tcp-doff"]
            if built.opt_lens:
                fields_ += ["tcp-opt", "tcp-opt"]
        elif built.proto == PROTO_UDP:
            fields_ += ["udp-len", "udp-len"]
        elif built.kind == "icmp-error":
            fields_ += ["quote-ihl", "quote-total"]
        if not fields_:
            fields_ = ["ip-total"] if l3 is not None else []
        if not fields_ or l3 is None:
            return
        which = r.choice(fields_)
        if which == "ip-total":
            true = len(frame) - ETH_LEN
            ihl = (frame[l3] & 0x0F) * 4
            value = r.choice([0, 1, 19, 20, ihl, true - 1, true + 1, true + 8, 0xFFFF])
            value = value if r.random() < 0.9 else r.getrandbits(16)
            frame[l3 + 2 : l3 + 4] = (value & 0xFFFF).to_bytes(2, "big")
        elif which == "ip-ihl":
            frame[l3] = (frame[l3] & 0xF0) | r.randrange(16)
        elif which == "arp-hlen":
            frame[l3 + 4] = r.choice([0, 1, 4, 5, 6, 7, 16, 255])
        elif which == "arp-plen":
            frame[l3 + 5] = r.choice([0, 1, 3, 4, 5, 6, 16, 255])
        elif l4 is None:
            return
        elif which == "tcp-doff" and l4 + 20 <= len(frame):
            frame[l4 + 12] = (r.randrange(16) << 4) | (frame[l4 + 12] & 0x0F)
        elif which == "tcp-opt" and l4 + built.l4_hlen <= len(frame):
            at = l4 + r.choice(built.opt_lens)
            frame[at] = r.choice([0, 1, 2, 3, 4, 9, 10, 11, 39, 40, 41, 255])
        elif which == "udp-len" and l4 + 8 <= len(frame):
            true = len(frame) - l4
            value = r.choice([0, 1, 7, 8, true - 1, true + 1, 0xFFFF, r.getrandbits(16)])
            frame[l4 + 4 : l4 + 6] = (value & 0xFFFF).to_bytes(2, "big")
        elif which == "quote-ihl" and l4 + 9 <= len(frame):
            frame[l4 + 8] = (frame[l4 + 8] & 0xF0) | r.randrange(16)
        elif which == "quote-total" and l4 + 12 <= len(frame):
            frame[l4 + 10 : l4 + 12] = r.choice([0, 1, 19, 20, 28, 0xFFFF]).to_bytes(2, "big")
        if r.random() < 0.75:
            refresh_checksums(frame)

    # ------------------------------------------------------------------ whole-case mutators

    def oversize(self) -> tuple[str, bytes]:
        """Frames far above the MTU, as GRO hands them over (or padded past Total Length)."""
        r = self.rng
        c = r.random()
        if c < 0.45:
            kind, src, dst, seg = self.tcp_repr()
            live = self.bench.live_socket()
            if live is not None and r.random() < 0.5:
                kind, src, dst = "gro-live", live.remote_ip, A_IP
                seg.src_port, seg.dst_port = live.remote_port, live.local_port
                exact = r.random() < 0.1
                seg.seq = (live.conn.rcv_nxt if exact else self._seq_for(live, True)) & _MASK
                seg.ack = live.conn.snd_una & _MASK
                seg.flags = TcpFlags.ACK | TcpFlags.PSH
            else:
                kind = "gro-" + kind
            seg.payload = b""
            start = tcp_payload_offset(seg)
            plen = r.randint(1449, 0xFFFF - (start - ETH_LEN))
            buf = bytearray(start + plen)
            buf[start:] = r.randbytes(plen)
            eth = EthernetRepr(self._src_mac(src), MAC_A, ETHERTYPE_IPV4)
            emit_tcp_frame(buf, eth, self._ip_header(src, dst, PROTO_TCP), seg, plen)
            return kind, bytes(buf)
        if c < 0.65:
            src = self._src_ip()
            plen = r.randint(1473, 65507)
            buf = bytearray(ETH_LEN + 28 + plen)
            buf[ETH_LEN + 28 :] = r.randbytes(plen)
            eth = EthernetRepr(self._src_mac(src), MAC_A, ETHERTYPE_IPV4)
            udp = UdpRepr(r.getrandbits(16), UDP_PORT if r.random() < 0.7 else r.getrandbits(16))
            emit_udp_frame(buf, eth, self._ip_header(src, A_IP, PROTO_UDP), udp, plen)
            return "gro-udp", bytes(buf)
        if c < 0.8:
            msg = Icmpv4Repr(TYPE_ECHO_REQUEST, 0, r.getrandbits(16), 1, r.randbytes(9000))
            if r.random() < 0.3:
                msg.data = r.randbytes(r.randint(9001, 65507 - 8))
            l4 = bytearray(msg.buffer_len())
            msg.emit(l4, 0)
            src = B_IP if r.random() < 0.5 else self._src_ip()
            built = self.build_ipv4("gro-echo", self._ip_header(src, A_IP, PROTO_ICMP), l4)
            return built.kind, bytes(built.frame)
        built = self.valid()
        built.frame += r.randbytes(r.randint(1, 9000))  # link-layer padding beyond Total Length
        return "padded-" + built.kind, bytes(built.frame)

    def fragments(self) -> tuple[str, list[bytes]]:
        """A train of IPv4 fragments of one datagram, cut and then damaged by a scheme."""
        r = self.rng
        c = r.random()
        if c < 0.35:
            _kind, src, _dst, seg = self.tcp_repr()
            proto, body = PROTO_TCP, self._tcp_bytes(seg, src, A_IP)
        elif c < 0.6:
            src = self._src_ip()
            udp = UdpRepr(r.getrandbits(16), UDP_PORT, r.randbytes(r.randint(16, 4000)))
            body = bytearray(udp.buffer_len())
            udp.emit(body, 0, src, A_IP)
            proto = PROTO_UDP
        elif c < 0.8:
            src = self._src_ip()
            echo = Icmpv4Repr(TYPE_ECHO_REQUEST, 0, r.getrandbits(16), 7, r.randbytes(4000))
            body = bytearray(echo.buffer_len())
            echo.emit(body, 0)
            proto = PROTO_ICMP
        else:
            src, proto = self._src_ip(), r.getrandbits(8)
            body = bytearray(r.randbytes(r.randint(16, 3000)))
        n = len(body)
        size = r.choice([8, 16, 24, 64, 256, 512, 1480])
        per = -(-n // 12)  # at most 12 pieces
        size = max(size, (per + 7) & ~7)
        pieces: list[tuple[int, bytes, bool]] = [
            (off, bytes(body[off : off + size]), off + size < n) for off in range(0, n, size)
        ]
        scheme = r.choice(
            [
                "whole",
                "shuffle",
                "missing",
                "duplicate",
                "overlap",
                "beyond-64k",
                "conflicting-end",
                "odd-size",
                "zero-length",
                "first-only",
            ]
        )
        if scheme == "shuffle":
            r.shuffle(pieces)
        elif scheme == "missing" and len(pieces) > 1:
            del pieces[r.randrange(len(pieces))]
        elif scheme == "duplicate":
            pieces.insert(r.randrange(len(pieces) + 1), r.choice(pieces))
        elif scheme == "overlap":
            off, data, more = r.choice(pieces)
            start = off + 8 * r.randint(0, max(len(data) // 8 - 1, 0))
            pieces.append((start, r.randbytes((max(len(data), 8) + 15) & ~7), True))
        elif scheme == "beyond-64k":
            start = 65528 - 8 * r.randrange(16)
            pieces.append((start, r.randbytes(r.randint(8, 1480)), r.random() < 0.5))
        elif scheme == "conflicting-end":
            end = n + r.choice([-8, 8, 16, -16])
            start = max(0, end - 8) & ~7
            pieces.append((start, r.randbytes(max(end - start, 1)), False))
        elif scheme == "odd-size":
            off, data, _ = pieces[r.randrange(len(pieces))]
            pieces.append((off, data + r.randbytes(r.randint(1, 7)), True))
        elif scheme == "zero-length":
            pieces.append(((r.randrange(n) & ~7), b"", r.random() < 0.7))
        elif scheme == "first-only" and len(pieces) > 1:
            pieces = pieces[:1]
            pieces[0] = (0, pieces[0][1], True)
        ident = r.choice(self._idents) if r.random() < 0.7 else r.getrandbits(16)
        frames = []
        options = self._maybe_options()
        src_mac = self._src_mac(src)
        for off, data, more in pieces:
            ip = Ipv4Repr(src, A_IP, proto, 0, 64, ident, more_frags=more, frag_offset=off)
            built = self.build_ipv4(
                "frag", ip, data, src_mac=src_mac, dst_mac=MAC_A, options=options
            )
            frames.append(bytes(built.frame))
            options = b"" if r.random() < 0.8 else options
        return "frag-" + scheme, frames

    def flood(self) -> tuple[str, list[bytes]]:
        """A burst of 16-64 frames (32-128 at the attacker's connection) of one pattern that
        piles up state, for the bounds of queues and tables and for costs that grow with what
        earlier frames left behind."""
        r = self.rng
        bench = self.bench
        target = bench.live_socket()
        attacker = bench.attacker_socket()
        if attacker is not None and (target is None or r.random() < 0.6):
            target = attacker
        what = r.choice(["ooo-bytes", "sack-ranges", "rst", "syn", "frag-heads", "arp", "udp"])
        if target is None and what in ("ooo-bytes", "sack-ranges", "rst"):
            what = "syn"
        n = r.randint(16, 64)
        frames: list[bytes] = []
        if what in ("ooo-bytes", "sack-ranges", "rst"):
            assert target is not None
            live = target
            conn = live.conn
            timestamps = bool(conn.negotiated["timestamps"])
            wnd = max(conn.rcv_adv - conn.rcv_nxt, 2)
            base = conn.rcv_nxt + 1 + r.randrange(max(wnd - 2 * n, 1))
            if target is attacker:
                # Go on where the last burst stopped, so the gaps add up over the whole run.
                n = r.randint(32, 128)
                base = max(bench.attacker_next, conn.rcv_nxt + 1)
                if base + 2 * n >= conn.rcv_adv:
                    base = conn.rcv_nxt + 1 + (bench.attacker_next & 1)
                bench.attacker_next = base + 2 * n
                what = "attacker-" + what
            una, top = conn.snd_una, conn.snd_max
            for i in range(n):
                seg = TcpRepr(
                    live.remote_port,
                    live.local_port,
                    conn.rcv_nxt & _MASK,
                    una & _MASK,
                    TcpFlags.ACK,
                    0xFFFF,
                )
                if what.endswith("ooo-bytes"):  # "SegmentSmack": one byte, every other offset
                    seg.seq = (base + 2 * i) & _MASK
                    seg.payload = r.randbytes(1)
                elif what.endswith("sack-ranges"):  # a 1-byte range at every other byte in flight
                    room = max(top - una, 1)
                    seg.sack_blocks = tuple(
                        (
                            (una + (6 * i + 2 * k) % room) & _MASK,
                            (una + (6 * i + 2 * k) % room + 1) & _MASK,
                        )
                        for k in range(3)
                    )
                else:  # in the window but not at RCV.NXT: challenge ACKs, rate-limited
                    seg.seq = (base + i) & _MASK
                    seg.flags = TcpFlags.RST
                if timestamps:
                    seg.timestamp = ((getattr(conn, "_ts_recent", 0) + 1) & _MASK, 0)
                built = self.build_tcp(what, live.remote_ip, A_IP, seg, b"", dst_mac=MAC_A)
                frames.append(bytes(built.frame))
        elif what == "syn":
            for _ in range(n):
                src = SUBNET | r.randint(3, 250) if r.random() < 0.7 else self._src_ip()
                seg = TcpRepr(
                    r.getrandbits(16),
                    LISTEN_PORT,
                    r.getrandbits(32),
                    0,
                    TcpFlags.SYN,
                    0xFFFF,
                    mss=1460,
                    window_scale=7,
                    sack_permitted=True,
                    timestamp=(r.getrandbits(32), 0),
                )
                frames.append(bytes(self.build_tcp("syn", src, A_IP, seg, b"", MAC_A).frame))
        elif what == "frag-heads":  # first fragments of distinct datagrams: the table fills up
            for _ in range(n):
                src = SUBNET | r.randint(3, 250)
                ip = Ipv4Repr(src, A_IP, PROTO_UDP, 0, 64, r.getrandbits(16), more_frags=True)
                data = r.randbytes(8 * r.randint(1, 185))
                built = self.build_ipv4("frag", ip, data, src_mac=pool_mac(src), dst_mac=MAC_A)
                frames.append(bytes(built.frame))
        elif what == "arp":  # requests for us from many hosts: each one is learned
            for _ in range(n):
                spa = (SUBNET | r.randint(3, 250)) if r.random() < 0.5 else r.getrandbits(32)
                sha = unicast_mac(r)
                buf = bytearray(ETH_LEN + 28)
                EthernetRepr(sha, MAC_BROADCAST, ETHERTYPE_ARP).emit(buf, 0)
                ArpRepr(OP_REQUEST, sha, spa, MAC_ZERO, A_IP).emit(buf, ETH_LEN)
                frames.append(bytes(buf))
        else:  # datagrams to the bound port: its queue fills up
            for _ in range(n):
                src = self._src_ip()
                udp = UdpRepr(r.getrandbits(16), UDP_PORT, r.randbytes(r.randint(0, 1472)))
                l4 = bytearray(udp.buffer_len())
                udp.emit(l4, 0, src, A_IP)
                ip = self._ip_header(src, A_IP, PROTO_UDP)
                frames.append(bytes(self.build_ipv4("udp", ip, l4, dst_mac=MAC_A).frame))
        return "flood-" + what, frames

    def peer_replay(self) -> tuple[str, bytes]:
        """A frame B really sent: replayed (an old duplicate), or with its TCP fields shifted
        (rebuilt by the emitters, so checksums are right), or with bits flipped."""
        r = self.rng
        captured = self.bench.net.from_b
        if not captured:
            built = self.tcp()
            return built.kind, bytes(built.frame)
        frame = bytearray(captured[r.randrange(len(captured))])
        c = r.random()
        if c < 0.4:
            return "peer-dup", bytes(frame)
        if c < 0.75:
            rebuilt = self._shift_tcp(frame)
            if rebuilt is not None:
                return "peer-shifted", rebuilt
        built = Built("peer-flipped", frame, ETH_LEN, None)
        self._bitflip(built)
        return built.kind, bytes(built.frame)

    def _shift_tcp(self, frame: bytearray) -> bytes | None:
        r = self.rng
        try:
            ip = Ipv4Repr.parse(memoryview(frame)[ETH_LEN:])
            if ip.protocol != PROTO_TCP or ip.is_fragment:
                return None
            packet = Ipv4Packet(memoryview(frame)[ETH_LEN:])
            seg = TcpRepr.parse(packet.payload, ip.src_addr, ip.dst_addr)
        except WireError:
            return None
        deltas = [1, -1, 1448, -1448, 65536, -65536, 1 << 31, r.getrandbits(32)]
        seg = replace(seg, payload=bytes(seg.payload))
        c = r.random()
        if c < 0.4:
            seg.seq = (seg.seq + r.choice(deltas)) & _MASK
        elif c < 0.7:
            seg.ack = (seg.ack + r.choice(deltas)) & _MASK
        elif c < 0.8:
            seg.flags = TcpFlags(self._tcp_flags("tcp-live"))
        else:
            seg.sack_blocks = self._sack_blocks(self.bench.live_socket())
            seg.timestamp = seg.timestamp or (r.getrandbits(32), 0)
            while True:
                try:
                    seg.header_len()
                    break
                except WireError:
                    seg.sack_blocks = seg.sack_blocks[:-1]
        built = self.build_tcp("peer-shifted", ip.src_addr, ip.dst_addr, seg, b"")
        built.frame[0:12] = frame[0:12]
        return bytes(built.frame)

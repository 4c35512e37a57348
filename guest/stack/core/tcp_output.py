"""The TCP transmit path: segments from `TcpConnection.poll` -> Ethernet frames.

This is the stack's hottest output code (every data segment and every ACK), so it works per
batch: one route and ARP lookup and one 14-byte Ethernet header per connection and `poll`, then
per segment only a right-sized `bytearray`, one copy of the payload into place and wire's
`emit_tcp_frame` writing IPv4 and TCP headers in front of it (no concatenation). The
connection's IPv4 header template is created once and reused with a fresh identification.

With `tso_max_size` set, runs of full-sized segments that differ only in sequence number are
merged into one `TsoFrame` for a TSO-capable device (or `gso.segment_tso`) to cut up again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN
from guest.stack.wire.frame import emit_tcp_frame
from guest.stack.wire.ipv4 import MIN_HEADER_LEN as IP_LEN
from guest.stack.wire.ipv4 import PROTO_TCP, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .arp import ArpResolver
from .counters import Counters
from .ipv4 import Ipv4Interface, Ipv4Output
from .offload import fill_partial_checksums
from .tcp_mux import TcpSocket

#: Largest TCP payload a TSO frame may carry (the IPv4 Total Length is 16 bits; header room
#: for a 60-byte TCP header).
MAX_TSO_SIZE: Final = 65535 - IP_LEN - 60

_MAC_ZERO: Final = b"\x00" * 6
_TSO_BREAK: Final = int(TcpFlags.SYN | TcpFlags.FIN | TcpFlags.RST | TcpFlags.URG)
_PSH: Final = int(TcpFlags.PSH)


class TsoFrame(bytearray):
    """A TCP frame larger than the MTU for the device to cut into `mss`-byte segments.

    Headers are those of the first segment; PSH/FIN, if set, belong to the last one (the usual
    TSO contract, as with e1000's TCP segmentation context and virtio's GSO_TCPV4). The TCP
    checksum field holds the pseudo-header seed (see `offload.py`), never a full checksum.
    """

    __slots__ = ("mss",)


class TcpFramer:
    """Builds and routes the frames of TCP segments."""

    __slots__ = ("arp", "checksums", "counters", "eth_tail", "iface", "ip_out", "tso_max_size")

    def __init__(
        self,
        iface: Ipv4Interface,
        mac: bytes,
        arp: ArpResolver,
        ip_out: Ipv4Output,
        counters: Counters,
        *,
        tso_max_size: int = 0,
        checksums: bool = True,
    ) -> None:
        if not 0 <= tso_max_size <= MAX_TSO_SIZE:
            raise ValueError(f"tso_max_size must be in [0, {MAX_TSO_SIZE}]")
        self.iface = iface
        self.arp = arp
        self.ip_out = ip_out
        self.counters = counters
        self.tso_max_size = tso_max_size
        self.checksums = checksums
        #: Source MAC + EtherType IPv4: the 8 bytes after the destination MAC.
        self.eth_tail = mac + b"\x08\x00"

    def emit(self, sock: TcpSocket, segs: list[TcpRepr], now: float, out: list) -> None:
        """Append the frames for `segs` (one connection's output) to `out`, or park them in
        ARP's queue while the next hop resolves."""
        ip = sock.ip
        if ip is None:
            ip = sock.ip = Ipv4Repr(
                self.iface.addr, sock.remote_ip, PROTO_TCP, 0, self.ip_out.ttl, dont_frag=True
            )
            sock.next_hop = self.iface.next_hop(sock.remote_ip)
        hop = sock.next_hop
        c = self.counters
        if hop is None:
            c.drop("ipv4:no-route")
            return
        arp = self.arp
        mac_addr = arp.lookup(hop, now, out)
        eth = (mac_addr if mac_addr is not None else _MAC_ZERO) + self.eth_tail
        if self.tso_max_size and (len(segs) > 1 or len(segs[0].payload) > sock.conn.mss):
            self._emit_tso(ip, hop, segs, now, eth, mac_addr, out, sock.conn.mss)
            return
        ip_out = self.ip_out
        csum = self.checksums
        for seg in segs:
            payload = seg.payload
            plen = len(payload)
            start = ETH_LEN + IP_LEN + seg.header_len()
            buf = bytearray(start + plen)
            if plen:
                buf[start:] = payload
            buf[0:ETH_LEN] = eth
            ip_out.ident = ident = (ip_out.ident + 1) & 0xFFFF
            ip.ident = ident
            emit_tcp_frame(buf, None, ip, seg, plen, ETH_LEN, csum)
            if not csum:
                fill_partial_checksums(buf, ETH_LEN)
            if mac_addr is None:
                arp.queue(hop, buf, now, out)
            else:
                out.append(buf)
        n = len(segs)
        c.tcp_out += n
        c.ip_out += n

    def _emit_tso(
        self,
        ip: Ipv4Repr,
        hop: int,
        segs: list[TcpRepr],
        now: float,
        eth: bytes,
        mac_addr: bytes | None,
        out: list,
        mss: int,
    ) -> None:
        """Emit the connection's super-segments (payload above `mss`, see
        `TcpConfig.tso_size`) as `TsoFrame`s, and merge runs of full-sized, contiguous,
        header-identical segments into `TsoFrame`s of at most `tso_max_size` payload bytes;
        other segments go out alone."""
        limit = self.tso_max_size
        i = 0
        n = len(segs)
        frames = 0
        while i < n:
            first = segs[i]
            size = len(first.payload)
            run_end = i + 1
            if size > mss:
                size = mss  # already a super-segment: the device cuts it into MSS pieces
            elif size and not int(first.flags) & (_TSO_BREAK | _PSH):
                total = size
                seq = first.seq + size
                while run_end < n:
                    seg = segs[run_end]
                    plen = len(seg.payload)
                    if (
                        not plen
                        or plen > size
                        or total + plen > limit
                        or seg.seq != seq & 0xFFFFFFFF
                        or int(seg.flags) & _TSO_BREAK
                        or seg.ack != first.ack
                        or seg.window != first.window
                        or seg.timestamp != first.timestamp
                        or seg.sack_blocks != first.sack_blocks
                    ):
                        break
                    total += plen
                    seq += plen
                    run_end += 1
                    if plen < size or int(seg.flags) & _PSH:
                        break  # a short or pushed segment ends the run
            run = segs[i:run_end]
            header = first
            if len(run) > 1:
                header = replace(first, flags=TcpFlags(int(first.flags) | int(run[-1].flags)))
            plen = sum(len(s.payload) for s in run)
            start = ETH_LEN + IP_LEN + header.header_len()
            merged = len(run) > 1 or plen > size
            if merged:
                tso = TsoFrame(start + plen)
                tso.mss = size
                buf: bytearray = tso
            else:
                buf = bytearray(start + plen)
            pos = start
            for s in run:
                k = len(s.payload)
                buf[pos : pos + k] = s.payload
                pos += k
            buf[0:ETH_LEN] = eth
            ip.ident = self.ip_out.next_ident()
            # The device numbers the segments ident, ident + 1, ...: skip past them.
            self.ip_out.ident = (ip.ident + (-(-plen // size) if plen > size else 1) - 1) & 0xFFFF
            emit_tcp_frame(buf, None, ip, header, plen, ETH_LEN, self.checksums and not merged)
            if merged or not self.checksums:
                fill_partial_checksums(buf, ETH_LEN)
            if mac_addr is None:
                self.arp.queue(hop, buf, now, out)
            else:
                out.append(buf)
            frames += 1
            i = run_end
        self.counters.tcp_out += frames
        self.counters.ip_out += frames

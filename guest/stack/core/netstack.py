"""`NetStack`: the protocol domain (Ethernet, ARP, IPv4, ICMP, UDP, TCP) as one sans-I/O object.

In the style of h11 and hyper-h2 there are no sockets, clocks or threads here: the owner feeds
received frames and the current time in, and takes frames to transmit and events out. The same
object therefore runs inside a single process (the monolithic user-level stack) or as the
protocol domain of a factored stack whose device and application live in other processes and
exchange frames and calls with it over shared-memory rings.

Calling convention (h11's): after *any* input (`receive_frame`, an API call) call `poll(now)`,
transmit what it returns and handle `events()`; when idle, sleep until `next_timeout()` (or a
frame arrives) and call `poll` again. Frames handed to `receive_frame` are never retained: every
byte the stack keeps is copied, so the device may recycle its buffer as soon as the call returns.

Sockets are small int handles, like file descriptors. A handle stays valid until the
application closes it, even after the connection ended (BSD semantics: a reset socket still
exists until `close`); a closed TCP handle's connection finishes its FIN exchange on its own.

Errors: bad input from the network never raises (it is counted in `counters`, by layer and
reason); misuse of the API raises `OSError` with the errno a socket call would set (EBADF,
EADDRINUSE, ENETUNREACH, EPIPE, EMSGSIZE, ...), so that a socket-like layer above can pass it on.

Offload seams (default off; nothing assumes a frame fits the MTU):
* `tso_max_size`: connections send new data in super-segments of up to that many TCP payload
  bytes (`TcpConfig.tso_size`), and consecutive full-sized segments of one `poll` (such as
  retransmissions) are merged likewise; each leaves as one `TsoFrame` carrying `mss` for the
  device to segment with (TCP segmentation offload); other frames stay plain `bytearray`s.
* GRO: received TCP segments may be larger than the MTU; they are processed like any other.
* `receive_frame(..., checksum_ok=True)`: the device verified the checksums (or the frame
  carries a partial checksum, virtio's NEEDS_CSUM on receive): skip verification.
* `tx_checksum_offload`: TCP and unfragmented UDP frames carry the pseudo-header seed for the
  device to finish (CHECKSUM_PARTIAL, see `offload.py`); TSO frames always do.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import fields, replace
from typing import Final

from guest.stack.tcp import TcpConfig, TcpState, TcpStateError
from guest.stack.wire.addr import MAC_BROADCAST, ipv4_str, mac_str
from guest.stack.wire.addr import mac as parse_mac
from guest.stack.wire.errors import WireError
from guest.stack.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN
from guest.stack.wire.frame import emit_tcp_frame, emit_udp_frame
from guest.stack.wire.icmp import (
    TYPE_ECHO_REQUEST,
    UNREACH_FRAG_NEEDED,
    UNREACH_PORT,
    UNREACH_PROTOCOL,
    Icmpv4Repr,
)
from guest.stack.wire.ipv4 import MIN_HEADER_LEN as IP_LEN
from guest.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr
from guest.stack.wire.ipv4_frag import Ipv4Reassembler
from guest.stack.wire.tcp import MIN_HEADER_LEN as TCP_LEN
from guest.stack.wire.tcp import TcpRepr
from guest.stack.wire.udp import HEADER_LEN as UDP_LEN
from guest.stack.wire.udp import UdpRepr

from . import arp as arp_mod
from .arp import ArpResolver
from .counters import Counters
from .events import EventQueue, StackEvent, UdpUnreachable
from .icmp import DEFAULT_ERROR_BURST, DEFAULT_ERROR_RATE, Icmp
from .ipv4 import UNICAST, Ipv4Input, Ipv4Interface, Ipv4Output, as_ip
from .offload import fill_partial_checksums
from .tcp_mux import DEFAULT_FIN_TIMEOUT, TcpListen, TcpMux, TcpSocket
from .tcp_output import MAX_TSO_SIZE, TcpFramer, TsoFrame
from .udp import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_DATAGRAMS, UdpSocket, UdpTable

#: Largest UDP payload in one IPv4 datagram: 65535 - 20 (IPv4) - 8 (UDP).
MAX_UDP_PAYLOAD: Final = 65507

_ETH = struct.Struct("!6s6sH")
_SEQ = struct.Struct("!I")


Handle = int
Socket = TcpSocket | TcpListen | UdpSocket


class NetStack:
    """The protocol domain of one host with one Ethernet interface and one IPv4 address."""

    def __init__(
        self,
        mac: bytes | str,
        addr: str,
        mtu: int = 1500,
        gateway: int | str | None = None,
        tcp_config: TcpConfig | None = None,
        secret: bytes | None = None,
        now: float = 0.0,
        *,
        tso_max_size: int = 0,
        tx_checksum_offload: bool = False,
        gratuitous_arp: bool = False,
        arp_timeout: float = arp_mod.DEFAULT_TIMEOUT,
        arp_refresh: float = arp_mod.DEFAULT_REFRESH,
        arp_retry_interval: float = arp_mod.DEFAULT_RETRY_INTERVAL,
        arp_max_requests: int = arp_mod.DEFAULT_MAX_REQUESTS,
        arp_queue_limit: int = arp_mod.DEFAULT_QUEUE_LIMIT,
        udp_queue_datagrams: int = DEFAULT_QUEUE_DATAGRAMS,
        udp_queue_bytes: int = DEFAULT_QUEUE_BYTES,
        icmp_error_rate: float = DEFAULT_ERROR_RATE,
        icmp_error_burst: int = DEFAULT_ERROR_BURST,
        fin_timeout: float = DEFAULT_FIN_TIMEOUT,
        ttl: int = 64,
        strict: bool = False,
    ) -> None:
        """Create the stack at time `now`.

        `addr` is "a.b.c.d/prefix"; `mac` 6 bytes or "52:54:00:..."; `gateway` an on-link
        address or None (then only the subnet is reachable). The TCP MSS is always derived
        from the MTU (`mtu - 40`), whatever `tcp_config.mss` says. `secret` keys ISNs, TSval
        offsets and ephemeral port choice (RFC 6528); None draws a random one, which is the
        only randomness in the stack (pass a fixed secret for reproducible runs).
        `strict` re-raises internal errors instead of counting them (for tests).
        """
        own_mac = mac if isinstance(mac, bytes) else parse_mac(mac)
        if len(own_mac) != 6 or own_mac[0] & 1:
            raise ValueError("mac must be a 6-byte unicast address")
        self.mac = own_mac
        self.iface = Ipv4Interface.from_text(addr, mtu, gateway)
        self.addr = self.iface.addr
        self.mtu = mtu
        self.counters = Counters()
        cfg = tcp_config if tcp_config is not None else TcpConfig()
        # With TSO, connections emit super-segments up to tso_max_size (see TcpConfig.tso_size).
        self.tcp_config = replace(cfg, mss=mtu - IP_LEN - TCP_LEN, tso_size=tso_max_size)
        self.strict = strict
        self._csum = not tx_checksum_offload
        self.tx_checksum_offload = tx_checksum_offload
        self._ttl = ttl
        self._now = now
        self._out: list[bytearray] = []
        self._events = EventQueue()
        self._handles: dict[Handle, Socket] = {}
        self._pings: set[Handle] = set()  # handles of ping sockets (UdpSocket-shaped too)
        self._next_handle = 1
        self._announce = gratuitous_arp
        # Ethernet source MAC + EtherType, the 8 bytes after the destination in every frame.
        self._eth_tail = own_mac + b"\x08\x00"

        c = self.counters
        self.reassembler = Ipv4Reassembler()
        self.ip_in = Ipv4Input(self.iface, c, self.reassembler)
        self.ip_out = Ipv4Output(self.iface, own_mac, c, ttl)
        self.arp = ArpResolver(
            own_mac,
            self.addr,
            c,
            timeout=arp_timeout,
            refresh=arp_refresh,
            retry_interval=arp_retry_interval,
            max_requests=arp_max_requests,
            queue_limit=arp_queue_limit,
        )
        self.icmp = Icmp(c, self._events, error_rate=icmp_error_rate, error_burst=icmp_error_burst)
        self.udp = UdpTable(c, max_datagrams=udp_queue_datagrams, max_bytes=udp_queue_bytes)
        self._framer = TcpFramer(
            self.iface,
            own_mac,
            self.arp,
            self.ip_out,
            c,
            tso_max_size=tso_max_size,
            checksums=self._csum,
        )
        self.tcp = TcpMux(
            self.addr,
            self.tcp_config,
            os.urandom(32) if secret is None else secret,
            c,
            self._events,
            fin_timeout=fin_timeout,
        )

    @property
    def tso_max_size(self) -> int:
        """TSO frame payload limit (0: off); settable once the device says what it can do."""
        return self._framer.tso_max_size

    @tso_max_size.setter
    def tso_max_size(self, value: int) -> None:
        if not 0 <= value <= MAX_TSO_SIZE:
            raise ValueError(f"tso_max_size must be in [0, {MAX_TSO_SIZE}]")
        self._framer.tso_max_size = value
        # Connections opened from now on emit super-segments of that size.
        self.tcp_config = replace(self.tcp_config, tso_size=value)
        self.tcp.config = self.tcp_config

    # ================================================================== frames and time

    def receive_frame(
        self, frame: bytes | bytearray | memoryview, now: float, checksum_ok: bool = False
    ) -> None:
        """Process one received Ethernet frame (FCS stripped). Never raises on bad input.

        `checksum_ok`: the device already verified IPv4/TCP/UDP checksums (receive offload).
        The frame may be larger than the MTU (GRO) and is not retained after the call.
        """
        c = self.counters
        c.frames_in += 1
        self._now = now
        layer = "eth"
        try:
            if type(frame) is memoryview:
                view = frame if frame.format == "B" and frame.ndim == 1 else frame.cast("B")
            else:
                view = memoryview(frame)
            c.bytes_in += len(view)
            if len(view) < ETH_LEN:
                c.drop("eth:truncated")
                return
            dst_mac, _, ethertype = _ETH.unpack_from(view)
            if dst_mac != self.mac and dst_mac != MAC_BROADCAST:
                c.drop("eth:not-for-us")
                return
            if ethertype == ETHERTYPE_IPV4:
                layer = "ipv4"
                verify = not checksum_ok
                got = self.ip_in.receive(view[ETH_LEN:], now, verify)
                if got is None:
                    return
                ip, payload, kind = got
                proto = ip.protocol
                if proto == PROTO_TCP:
                    layer = "tcp"
                    seg = TcpRepr.parse(payload, ip.src_addr, ip.dst_addr, verify)
                    c.tcp_in += 1
                    if kind != UNICAST:
                        c.drop("tcp:broadcast")
                        return
                    reply = self.tcp.receive(seg, ip.src_addr, now)
                    if reply is not None:
                        self._send_tcp_raw(ip.src_addr, reply, now)
                elif proto == PROTO_UDP:
                    layer = "udp"
                    self._udp_in(ip, payload, kind, verify, now)
                elif proto == PROTO_ICMP:
                    layer = "icmp"
                    self._icmp_in(ip, payload, kind, verify, now)
                else:
                    c.drop("ipv4:protocol")
                    self._unreachable(UNREACH_PROTOCOL, ip, payload, kind, now)
            elif ethertype == ETHERTYPE_ARP:
                layer = "arp"
                self.arp.receive(view[ETH_LEN:], now, self._out)
            else:
                c.drop("eth:ethertype")
        except WireError as exc:
            c.drop(f"{layer}:{exc.reason}")
        except Exception:
            c.drop("internal-error")
            if self.strict:
                raise

    def poll(self, now: float) -> list[bytearray]:
        """Run due timers and return every frame to transmit now (ARP, ICMP, UDP, TCP)."""
        self._now = now
        out = self._out
        if self._announce:
            self._announce = False
            out.append(self.arp.announce())
        self.arp.poll(now, out)
        self.tcp.poll(now, self._emit_tcp)
        if len(self.reassembler):
            self.reassembler.expire(now)
        if not out:
            return []  # never hand out the internal list: later output would land in it
        self._out = []
        c = self.counters
        c.frames_out += len(out)
        c.bytes_out += sum(map(len, out))
        return out

    @property
    def has_work(self) -> bool:
        """Output or a connection waits for `poll` now (an input was not followed by one)."""
        return bool(self._out or self._announce or self.tcp.has_work)

    def next_timeout(self) -> float | None:
        """When `poll` must run next if no frame arrives; None when nothing is scheduled.

        May be early (a lazily rescheduled TCP timer), never late. Returns the latest `now`
        seen when work is already waiting (an input was not followed by `poll`).
        """
        if self.has_work:
            return self._now
        best = self.tcp.next_timeout()
        t = self.arp.next_timeout()
        if t is not None and (best is None or t < best):
            best = t
        return best

    def events(self) -> list[StackEvent]:
        """Drain the events produced since the last call (see `events.py`)."""
        return self._events.drain()

    # ================================================================== TCP API

    def tcp_connect(
        self, remote_ip: int | str, remote_port: int, now: float, local_port: int | None = None
    ) -> Handle:
        """Active open; `Connected` (or a terminal event) follows. Raises `OSError`
        (ENETUNREACH without a route, EADDRINUSE for a 4-tuple in use, EINVAL)."""
        dst = as_ip(remote_ip)
        if self.iface.next_hop(dst) is None or self.iface.is_broadcast(dst):
            raise OSError(errno.ENETUNREACH, f"no route to {ipv4_str(dst)}")
        self._now = now
        handle = self._next_handle
        sock = self.tcp.connect(handle, dst, remote_port, now, local_port)
        self._next_handle += 1
        self._handles[handle] = sock
        return handle

    def tcp_listen(self, port: int, backlog: int = 128) -> Handle:
        """Listen on `port`; `Accepted` events announce connections for `tcp_accept`."""
        handle = self._next_handle
        lst = self.tcp.listen(handle, port, backlog)
        self._next_handle += 1
        self._handles[handle] = lst
        return handle

    def tcp_accept(self, handle: Handle) -> Handle | None:
        """The next established connection of listener `handle` as a new handle, or None."""
        lst = self._handles.get(handle)
        if type(lst) is not TcpListen:
            raise OSError(errno.EINVAL, f"handle {handle} is not a listener")
        sock = self.tcp.accept(lst, self._new_handle)
        return None if sock is None else sock.handle

    def tcp_send(
        self, handle: Handle, data: bytes | bytearray | memoryview, now: float | None = None
    ) -> int:
        """Queue bytes; returns how many the send buffer took (a `Writable` event follows a
        short count). Segments leave at the next `poll` (`now`, if given, only advances the
        stack's notion of the latest time). Raises BrokenPipeError after close or reset."""
        if now is not None:
            self._now = now
        sock = self._tcp(handle)
        try:
            n = sock.conn.send(data)
        except TcpStateError as exc:
            raise BrokenPipeError(errno.EPIPE, str(exc)) from None
        if n:
            self.tcp.touch(sock)
        return n

    def tcp_recv(self, handle: Handle, max_bytes: int = -1) -> bytes:
        """Take up to `max_bytes` in-order bytes (all when negative); b"" when none are ready
        (check `tcp_at_eof` or the `PeerClosed` event for end of stream)."""
        sock = self._tcp(handle)
        data = sock.conn.recv(max_bytes)
        if data and sock.conn.ack_pending:
            self.tcp.touch(sock)  # reading opened the window: a window update is due
        return data

    def tcp_recv_into(self, handle: Handle, buffer: bytearray | memoryview) -> int:
        """Copy in-order bytes into `buffer`; returns the count (0 when none are ready)."""
        sock = self._tcp(handle)
        n = sock.conn.recv_into(buffer)
        if n and sock.conn.ack_pending:
            self.tcp.touch(sock)  # only a window update can be due after a read
        return n

    def tcp_at_eof(self, handle: Handle) -> bool:
        """The peer closed and every byte before its FIN has been read."""
        return self._tcp(handle).conn.at_eof

    def tcp_shutdown(self, handle: Handle) -> None:
        """Half-close (SHUT_WR): FIN after the queued data; the handle keeps receiving until
        the peer closes too and the terminal event arrives. Idempotent. Before the handshake
        completed (SYN-SENT) this abandons the connection, as RFC 9293's CLOSE does."""
        sock = self._tcp(handle)
        sock.conn.close()
        self.tcp.touch(sock)

    def tcp_close(self, handle: Handle, now: float | None = None) -> None:
        """Close a connection gracefully (FIN after queued data; RST if unread data remains,
        as Linux does) or stop a listener (its unaccepted connections are reset). The handle
        is released at once; the connection finishes on its own."""
        sock = self._release_tcp(handle)
        if type(sock) is TcpSocket:
            self.tcp.close(sock, self._now if now is None else now)
        else:
            self.tcp.close_listener(sock)

    def tcp_abort(self, handle: Handle) -> None:
        """Reset the connection (RST) and release the handle."""
        sock = self._release_tcp(handle)
        if type(sock) is TcpSocket:
            self.tcp.abort(sock)
        else:
            self.tcp.close_listener(sock)

    def _release_tcp(self, handle: Handle) -> TcpSocket | TcpListen:
        """Take a TCP connection or listener out of the handle table (EBADF for any other
        handle, which stays as it was)."""
        sock = self._handles.get(handle)
        if type(sock) is not TcpSocket and type(sock) is not TcpListen:
            raise OSError(errno.EBADF, f"handle {handle} is not a TCP socket")
        del self._handles[handle]
        return sock

    # ================================================================== UDP API

    def udp_bind(self, port: int = 0) -> Handle:
        """Bind a UDP socket to `port` (0: ephemeral). Raises OSError(EADDRINUSE)."""
        handle = self._next_handle
        sock = self.udp.bind(handle, port)
        self._next_handle += 1
        self._handles[handle] = sock
        return handle

    def udp_sendto(
        self,
        handle: Handle,
        data: bytes | bytearray | memoryview,
        ip: int | str,
        port: int,
        now: float,
    ) -> bool:
        """Send one datagram (fragmented if larger than the MTU; to a broadcast address
        too). Returns False when there is no route. Frames leave at the next `poll`, or once
        ARP resolved the next hop. Raises OSError(EMSGSIZE) above 65507 bytes."""
        sock = self._udp_sock(handle)
        if not 0 < port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"bad UDP port {port}")
        if type(data) is memoryview and data.itemsize != 1:
            data = data.cast("B")
        n = len(data)
        if n > MAX_UDP_PAYLOAD:
            raise OSError(errno.EMSGSIZE, f"UDP payload of {n} bytes")
        dst = as_ip(ip)
        self._now = now
        src = self.addr
        udp = UdpRepr(sock.port, port)
        if IP_LEN + UDP_LEN + n <= self.mtu:
            start = ETH_LEN + IP_LEN + UDP_LEN
            buf = bytearray(start + n)
            buf[start:] = data
            buf[6:ETH_LEN] = self._eth_tail
            ip_hdr = Ipv4Repr(src, dst, PROTO_UDP, 0, self._ttl, self.ip_out.next_ident())
            emit_udp_frame(buf, None, ip_hdr, udp, n, ETH_LEN, self._csum)
            if not self._csum:
                fill_partial_checksums(buf, ETH_LEN)
            self.counters.ip_out += 1
            frames = [buf]
        else:
            datagram = bytearray(UDP_LEN + n)
            udp.payload = data
            udp.emit(datagram, 0, src, dst)
            frames = self.ip_out.frames(dst, PROTO_UDP, datagram)
        sent = self._transmit(frames, dst, now)
        if sent:
            self.counters.udp_out += 1
            sock.datagrams_out += 1
            sock.bytes_out += n
        return sent

    def udp_recvfrom(self, handle: Handle) -> tuple[bytes, int, int] | None:
        """The oldest queued datagram as (payload, source ip, source port), or None."""
        sock = self._udp_sock(handle)
        return sock.pop()

    def udp_close(self, handle: Handle) -> None:
        sock = self._udp_sock(handle)
        del self._handles[handle]
        self.udp.unbind(sock)

    # ================================================================== ICMP echo API

    def icmp_bind(self, ident: int = 0) -> Handle:
        """A ping socket owning echo identifier `ident` (0: a free one); replies carrying it
        are queued for `icmp_recv` and announced by `EchoReplyReadable`."""
        handle = self._next_handle
        sock = self.icmp.bind(handle, ident)
        self._next_handle += 1
        self._handles[handle] = sock
        self._pings.add(handle)
        return handle

    def icmp_echo(
        self, handle: Handle, ip: int | str, seq: int, data: bytes | bytearray, now: float
    ) -> bool:
        """Send an echo request with the socket's identifier; False when it cannot leave."""
        sock = self._ping(handle)
        dst = as_ip(ip)
        self._now = now
        msg = Icmpv4Repr(TYPE_ECHO_REQUEST, 0, sock.port, seq & 0xFFFF, data)
        buf = bytearray(msg.buffer_len())
        msg.emit(buf, 0)
        sent = self._transmit(self.ip_out.frames(dst, PROTO_ICMP, buf), dst, now)
        if sent:
            self.counters.icmp_out += 1
            sock.datagrams_out += 1
        return sent

    def icmp_recv(self, handle: Handle) -> tuple[bytes, int, int] | None:
        """The oldest echo reply as (data, source ip, sequence number), or None."""
        return self._ping(handle).pop()

    def icmp_close(self, handle: Handle) -> None:
        sock = self._ping(handle)
        del self._handles[handle]
        self._pings.discard(handle)
        self.icmp.unbind(sock)

    # ================================================================== introspection

    def socket_info(self, handle: Handle) -> dict[str, object]:
        """State, negotiated options and statistics of one socket, for reports."""
        sock = self._handles.get(handle)
        if sock is None:
            raise OSError(errno.EBADF, f"no socket {handle}")
        if type(sock) is UdpSocket:
            info = sock.info()
            if handle in self._pings:
                info["kind"] = "icmp-echo"
                info["ident"] = info.pop("local_port")
            return info
        if type(sock) is TcpListen:
            listener = sock.listener
            return {
                "kind": "tcp-listener",
                "local_port": sock.port,
                "backlog": listener.backlog,
                "pending": listener.pending,
                "syns_dropped": listener.syns_dropped,
                "syncookies_sent": listener.syncookies_sent,
                "syncookies_validated": listener.syncookies_validated,
            }
        assert type(sock) is TcpSocket
        conn = sock.conn
        return {
            "kind": "tcp",
            "state": str(conn.state),
            "local": f"{ipv4_str(self.addr)}:{sock.local_port}",
            "remote": f"{ipv4_str(sock.remote_ip)}:{sock.remote_port}",
            "negotiated": conn.negotiated,
            "send_queued": conn.send_queued,
            "send_space": conn.send_space,
            "recv_available": conn.recv_available,
            "at_eof": conn.at_eof,
            "stats": conn.stats.as_dict(),
        }

    def tcp_lingering(self) -> int:
        """Connections with work left on the wire: unacknowledged data or FIN, or a close
        handshake under way (every state but TIME-WAIT). A stack process that is asked to
        stop keeps running while this is non-zero, as the kernel keeps a closed socket's
        connection alive after its process exits, so the peer still gets every byte and FIN."""
        return sum(1 for s in self.tcp.conns.values() if s.conn.state is not TcpState.TIME_WAIT)

    def handles(self) -> list[Handle]:
        """Open handles."""
        return list(self._handles)

    def stats(self) -> dict[str, object]:
        """Stack-wide counters (flat), plus reassembly, ARP and socket table sizes."""
        out: dict[str, object] = dict(self.counters.as_dict())
        rs = self.reassembler.stats
        for f in fields(rs):
            out[f"ip_frag_{f.name}"] = getattr(rs, f.name)
        out["arp_entries"] = len(self.arp.entries(self._now))
        out["tcp_connections"] = len(self.tcp.conns)
        out["tcp_listeners"] = len(self.tcp.listeners)
        out["udp_sockets"] = len(self.udp.ports)
        for name, value in self.tcp.totals().items():
            out[f"tcp.{name}"] = value
        return out

    def arp_table(self, now: float | None = None) -> dict[str, str]:
        """ARP entries valid at `now` (default: the latest time the stack saw), as text."""
        entries = self.arp.entries(self._now if now is None else now)
        return {ipv4_str(ip): mac_str(m) for ip, m in entries.items()}

    # ================================================================== receive helpers

    def _udp_in(
        self, ip: Ipv4Repr, payload: memoryview | bytes, kind: int, verify: bool, now: float
    ) -> None:
        udp = UdpRepr.parse(payload, ip.src_addr, ip.dst_addr, verify)
        self.counters.udp_in += 1
        handle = self.udp.deliver(udp.dst_port, udp.payload, ip.src_addr, udp.src_port)
        if handle > 0:
            self._events.udp_readable(handle)
        elif handle == 0:
            self.counters.drop("udp:no-port")
            self._unreachable(UNREACH_PORT, ip, payload, kind, now)
        else:
            self.counters.drop("udp:queue-full")

    def _icmp_in(
        self, ip: Ipv4Repr, payload: memoryview | bytes, kind: int, verify: bool, now: float
    ) -> None:
        reply, quoted = self.icmp.receive(payload, ip.src_addr, kind, verify)
        if reply is not None:
            msg = bytearray(reply.buffer_len())
            reply.emit(msg, 0)
            if self._transmit(self.ip_out.frames(ip.src_addr, PROTO_ICMP, msg), ip.src_addr, now):
                self.counters.icmp_out += 1
                self.counters.icmp_echo_replies_out += 1
            return
        if quoted is None:
            return
        header = quoted.header
        if header.src_addr != self.addr or len(quoted.payload) < 8:
            self.counters.drop("icmp:foreign-quote")
            return
        msg_code = payload[1]
        sport, dport = quoted.ports
        if header.protocol == PROTO_UDP:
            sock = self.udp.ports.get(sport)
            if sock is not None:
                self._events.append(UdpUnreachable(sock.handle, header.dst_addr, dport))
        elif header.protocol == PROTO_TCP and msg_code != UNREACH_FRAG_NEEDED:
            seq = _SEQ.unpack_from(quoted.payload, 4)[0]
            self.tcp.icmp_unreachable(header.dst_addr, dport, sport, seq)

    def _unreachable(
        self, code: int, ip: Ipv4Repr, payload: memoryview | bytes, kind: int, now: float
    ) -> None:
        msg = self.icmp.unreachable(code, ip, payload, kind, now)
        if msg is None:
            return
        buf = bytearray(msg.buffer_len())
        msg.emit(buf, 0)
        if self._transmit(self.ip_out.frames(ip.src_addr, PROTO_ICMP, buf), ip.src_addr, now):
            self.counters.icmp_out += 1

    # ================================================================== transmit helpers

    def _transmit(self, frames: list[bytearray], dst: int, now: float) -> bool:
        """Route frames (destination MAC still zero) to `dst`: patch the MAC, or queue them
        behind ARP. False when there is no route."""
        if not frames:
            return False
        out = self._out
        if self.iface.is_broadcast(dst):
            for f in frames:
                f[0:6] = MAC_BROADCAST
            out.extend(frames)
            return True
        hop = self.iface.next_hop(dst)
        if hop is None:
            self.counters.drop("ipv4:no-route")
            return False
        mac_addr = self.arp.lookup(hop, now, out)
        if mac_addr is None:
            for f in frames:
                self.arp.queue(hop, f, now, out)
            return True
        for f in frames:
            f[0:6] = mac_addr
        out.extend(frames)
        return True

    def _send_tcp_raw(self, dst: int, seg: TcpRepr, now: float) -> None:
        """A connectionless segment (RST to a stray) to `dst`."""
        hlen = seg.header_len()
        plen = len(seg.payload)
        buf = bytearray(ETH_LEN + IP_LEN + hlen + plen)
        if plen:
            buf[ETH_LEN + IP_LEN + hlen :] = seg.payload
        buf[6:ETH_LEN] = self._eth_tail
        ip = Ipv4Repr(self.addr, dst, PROTO_TCP, 0, self._ttl, self.ip_out.next_ident(), True)
        emit_tcp_frame(buf, None, ip, seg, plen, ETH_LEN, self._csum)
        if not self._csum:
            fill_partial_checksums(buf, ETH_LEN)
        self.counters.ip_out += 1
        if self._transmit([buf], dst, now):
            self.counters.tcp_out += 1

    def _emit_tcp(self, sock: TcpSocket, segs: list[TcpRepr], now: float) -> None:
        """The mux's output callback: one connection's segments become frames."""
        self._framer.emit(sock, segs, now, self._out)

    # ================================================================== handles

    def _new_handle(self, sock: Socket) -> Handle:
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = sock
        return handle

    def _udp_sock(self, handle: Handle) -> UdpSocket:
        sock = self._handles.get(handle)
        if handle in self._pings or type(sock) is not UdpSocket:
            raise OSError(errno.EBADF, f"handle {handle} is not a UDP socket")
        return sock

    def _ping(self, handle: Handle) -> UdpSocket:
        sock = self._handles.get(handle)
        if handle not in self._pings or type(sock) is not UdpSocket:
            raise OSError(errno.EBADF, f"handle {handle} is not a ping socket")
        return sock

    def _tcp(self, handle: Handle) -> TcpSocket:
        sock = self._handles.get(handle)
        if type(sock) is not TcpSocket:
            raise OSError(errno.EBADF, f"handle {handle} is not a TCP connection")
        return sock

    def __repr__(self) -> str:
        return f"<NetStack {ipv4_str(self.addr)}/{self.iface.prefix_len} {mac_str(self.mac)}>"


__all__ = ["MAX_TSO_SIZE", "MAX_UDP_PAYLOAD", "NetStack", "TsoFrame"]

"""ICMPv4 (RFC 792, RFC 1122 section 3.2.2): echo replies, error generation and error intake.

What we send:
* echo replies to echo requests addressed to our unicast address (requests to a broadcast
  address are ignored, as Linux does by default with icmp_echo_ignore_broadcasts, because
  answering them turns the host into a smurf amplifier);
* destination unreachable (port unreachable for UDP to a closed port, protocol unreachable for
  an unknown protocol), under RFC 1122 3.2.2's rules: never about an ICMP error, a broadcast or
  a martian source, and only through a token bucket (RFC 1812 4.3.2.8) so that a flood of
  datagrams to closed ports cannot turn into a flood of errors.

What we take: destination-unreachable messages, decoded down to the quoted datagram so the
stack can find the socket that sent it (`QuotedDatagram`), and echo replies for *ping sockets*.
Those work like Linux's unprivileged ICMP sockets: a socket owns an echo identifier the way a
UDP socket owns a port, and replies carrying it are queued as (data, source, sequence number),
so the testbed can measure ICMP round trips through this stack as it does through Linux's.
"""

from __future__ import annotations

import errno
from typing import Final

from guest.stack.wire.icmp import (
    MAX_QUOTE_LEN,
    MIN_QUOTED_PAYLOAD,
    TYPE_DST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    Icmpv4Repr,
    QuotedDatagram,
)
from guest.stack.wire.ipv4 import MIN_HEADER_LEN, PROTO_ICMP, Ipv4Repr

from .counters import Counters
from .events import EventQueue
from .ipv4 import UNICAST
from .ratelimit import TokenBucket
from .udp import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_DATAGRAMS, UdpSocket

#: Linux sends at most icmp_msgs_per_sec (1000) errors, bursts of icmp_msgs_burst (50).
DEFAULT_ERROR_RATE: Final = 1000.0
DEFAULT_ERROR_BURST: Final = 50


class Icmp:
    """Decides what to answer and what to report; the stack does the sending."""

    __slots__ = ("_next_ident", "counters", "events", "limiter", "pings")

    def __init__(
        self,
        counters: Counters,
        events: EventQueue,
        *,
        error_rate: float = DEFAULT_ERROR_RATE,
        error_burst: int = DEFAULT_ERROR_BURST,
    ) -> None:
        self.counters = counters
        self.events = events
        self.limiter = TokenBucket(error_rate, error_burst)
        #: Echo identifier -> ping socket (queue of (data, source ip, sequence number)).
        self.pings: dict[int, UdpSocket] = {}
        self._next_ident = 1

    def receive(
        self, payload: memoryview | bytes, src: int, kind: int, verify: bool
    ) -> tuple[Icmpv4Repr | None, QuotedDatagram | None]:
        """Process one ICMP message from `src`: returns (echo reply to send, quoted datagram
        of an unreachable to report). Raises `WireError` for malformed messages and for types
        the codec does not decode ("unsupported"); the caller counts those.
        """
        msg = Icmpv4Repr.parse(payload, verify)
        c = self.counters
        c.icmp_in += 1
        mtype = msg.msg_type
        if mtype == TYPE_ECHO_REQUEST:
            c.icmp_echo_requests_in += 1
            if kind != UNICAST:
                c.drop("icmp:echo-to-broadcast")
                return None, None
            return Icmpv4Repr(TYPE_ECHO_REPLY, 0, msg.ident, msg.seq_no, msg.data), None
        if mtype == TYPE_DST_UNREACHABLE:
            c.icmp_unreachable_in += 1
            return None, msg.quoted
        if mtype == TYPE_ECHO_REPLY:
            sock = self.pings.get(msg.ident)
            if sock is None:
                c.drop("icmp:echo-reply-no-socket")
            elif sock.push(bytes(msg.data), src, msg.seq_no):
                self.events.echo_readable(sock.handle)
            else:
                c.drop("icmp:echo-reply-queue-full")
            return None, None
        c.drop(f"icmp:type-{mtype}")  # time exceeded: nothing here routes or traceroutes
        return None, None

    # -- ping sockets ---------------------------------------------------------------------------

    def bind(self, handle: int, ident: int) -> UdpSocket:
        """A ping socket owning echo identifier `ident` (0: pick a free one)."""
        if ident == 0:
            for _ in range(0xFFFF):
                candidate = self._next_ident
                self._next_ident = candidate % 0xFFFF + 1
                if candidate not in self.pings:
                    ident = candidate
                    break
            else:
                raise OSError(errno.EADDRNOTAVAIL, "no echo identifier left")
        elif not 0 < ident <= 0xFFFF:
            raise OSError(errno.EINVAL, f"bad echo identifier {ident}")
        elif ident in self.pings:
            raise OSError(errno.EADDRINUSE, f"echo identifier {ident} in use")
        sock = UdpSocket(handle, ident, DEFAULT_QUEUE_DATAGRAMS, DEFAULT_QUEUE_BYTES)
        self.pings[ident] = sock
        return sock

    def unbind(self, sock: UdpSocket) -> None:
        if self.pings.get(sock.port) is sock:
            del self.pings[sock.port]

    def unreachable(
        self, code: int, ip: Ipv4Repr, payload: memoryview | bytes, kind: int, now: float
    ) -> Icmpv4Repr | None:
        """The destination unreachable for a datagram we cannot deliver, or None when RFC
        1122's rules or the rate limit forbid one."""
        if kind != UNICAST or (ip.protocol == PROTO_ICMP and _is_error(payload)):
            return None
        if len(payload) < MIN_QUOTED_PAYLOAD:
            return None  # RFC 792's quote needs 64 bits of the datagram; peers parse them
        if not self.limiter.take(now):
            self.counters.icmp_rate_limited += 1
            return None
        # Quote the header as received (options dropped) and the start of the payload; the
        # datagram may have been reassembled, so the original bytes are not at hand.
        take = min(len(payload), MAX_QUOTE_LEN - MIN_HEADER_LEN)
        quote = bytearray(MIN_HEADER_LEN + take)
        Ipv4Repr(
            ip.src_addr,
            ip.dst_addr,
            ip.protocol,
            ip.payload_len,
            ip.ttl,
            ip.ident,
            ip.dont_frag,
            dscp=ip.dscp,
            ecn=ip.ecn,
        ).emit(quote, 0)
        quote[MIN_HEADER_LEN:] = payload[:take]
        self.counters.icmp_unreachable_out += 1
        return Icmpv4Repr.dst_unreachable(code, quote)


def _is_error(payload: memoryview | bytes) -> bool:
    """True for ICMP messages that are not queries (RFC 1122: never answer an error)."""
    return len(payload) == 0 or payload[0] not in (TYPE_ECHO_REQUEST, TYPE_ECHO_REPLY, 13, 15, 17)

"""Passive open: the LISTEN state and the backlog (RFC 9293 sections 3.10.1 and 3.10.7.2).

The stack owns demultiplexing: it looks a segment up by 4-tuple first and hands it to the
listener of the local endpoint only when no connection matches. A SYN then yields a new
`TcpConnection` in SYN-RECEIVED, which the stack registers under its 4-tuple and polls like any
other; the listener keeps a reference to it so that `accept()` can hand it to the application
once the handshake completes. Nothing here touches sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .config import TcpConfig
from .connection import TcpConnection
from .reset import reset_for
from .seq import SEQ_MASK
from .state import TcpState
from .syncookies import PERIOD, SynCookies, decode_ts_options, encode_ts_options

Endpoint = tuple[Hashable, int]
IsnFunction = Callable[[Endpoint, Endpoint, float], int]
TsOffsetFunction = Callable[[Endpoint, Endpoint], int]

#: States in which a child connection is ready to be accepted (its data or EOF is readable).
_ACCEPTABLE = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.CLOSE_WAIT,
        TcpState.FIN_WAIT_1,
        TcpState.FIN_WAIT_2,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
        TcpState.TIME_WAIT,
    }
)


@dataclass(frozen=True, slots=True)
class ListenResult:
    """What the stack must do with a segment the listener took.

    `connection`: a new SYN-RECEIVED connection to register under (local, remote) and poll.
    `reply`: a segment (an RST) to transmit. Both None: the segment was dropped.
    """

    connection: TcpConnection | None = None
    reply: TcpRepr | None = None


#: Cookie ACKs are looked at only this long after the last cookie went out (Linux: two
#: minutes), so that in normal times a stray ACK is answered with an RST as RFC 9293 says.
COOKIE_WINDOW = 2 * PERIOD


class TcpListener:
    """A listening endpoint with a bounded backlog of not-yet-accepted connections.

    With `cookies`, a SYN arriving while the backlog is full is answered with a SYN cookie
    (`syncookies.py`) instead of being dropped, and an ACK carrying a valid cookie creates the
    connection, established at once, as long as fewer than `backlog` established connections
    wait to be accepted. Half-open state therefore never exceeds the backlog, and a flood of
    spoofed SYNs cannot lock legitimate clients out.
    """

    def __init__(
        self,
        local: Endpoint,
        config: TcpConfig | None = None,
        *,
        isn: IsnFunction,
        ts_offset: TsOffsetFunction | None = None,
        backlog: int = 128,
        cookies: SynCookies | None = None,
    ) -> None:
        if backlog < 1:
            raise ValueError("backlog must be at least 1")
        self.local = local
        self.config = config if config is not None else TcpConfig()
        self.backlog = backlog
        self.state = TcpState.LISTEN
        self._isn = isn
        self._ts_offset = ts_offset
        self._children: list[TcpConnection] = []
        self._cookies = cookies
        self._last_cookie = float("-inf")
        self.syns_dropped = 0
        self.syncookies_sent = 0
        self.syncookies_validated = 0
        self.syncookies_failed = 0

    def receive_segment(self, seg: TcpRepr, remote: Endpoint, now: float) -> ListenResult:
        """Process a segment for which no connection exists (RFC 9293 section 3.10.7.2)."""
        flags = seg.flags
        if flags & TcpFlags.RST:
            return ListenResult()  # first: an incoming RST is ignored
        if flags & TcpFlags.ACK:
            if not flags & TcpFlags.SYN and now - self._last_cookie <= COOKIE_WINDOW:
                taken = self._from_cookie(seg, remote, now)
                if taken is not None:
                    return taken
            return ListenResult(reply=reset_for(seg))  # second: <SEQ=SEG.ACK><CTL=RST>
        if not flags & TcpFlags.SYN:
            return ListenResult()  # fourth: anything else is dropped
        self._prune()
        if len(self._children) >= self.backlog:
            if self._cookies is not None and self.config.syncookies:
                return ListenResult(reply=self._cookie_syn_ack(seg, remote, now))
            # Like Linux without SYN cookies: drop, the peer retransmits its SYN later.
            self.syns_dropped += 1
            return ListenResult()
        conn = self._child(seg, remote, self._isn(self.local, remote, now), now)
        self._children.append(conn)
        return ListenResult(connection=conn)

    def _child(self, syn: TcpRepr, remote: Endpoint, isn: int, now: float) -> TcpConnection:
        """A SYN-RECEIVED connection answering `syn` with initial sequence number `isn`."""
        ts_offset = self._ts_offset(self.local, remote) if self._ts_offset is not None else 0
        return TcpConnection.accept_syn(
            syn, local=self.local, remote=remote, config=self.config, isn=isn, now=now,
            ts_offset=ts_offset,
        )  # fmt: skip

    def _cookie_syn_ack(self, syn: TcpRepr, remote: Endpoint, now: float) -> TcpRepr:
        """The SYN-ACK a connection accepting `syn` would send, its ISN a cookie, its TSval
        carrying the options the cookie cannot, and nothing kept. Without the client's
        timestamps there is nowhere to keep window scaling and SACK, so they are not offered."""
        assert self._cookies is not None
        if syn.timestamp is None or not self.config.timestamps:
            syn = replace(syn, window_scale=None, sack_permitted=False)
        cookie = self._cookies.make(self.local, remote, syn.seq, syn.mss or 536, now)
        conn = self._child(syn, remote, cookie, now)
        syn_ack = conn.poll(now)[0]
        if syn_ack.timestamp is not None:
            tsval, tsecr = syn_ack.timestamp
            tsval = encode_ts_options(tsval, syn.window_scale, syn.sack_permitted)
            syn_ack = replace(syn_ack, timestamp=(tsval, tsecr))
        self.syncookies_sent += 1
        self._last_cookie = now
        return syn_ack

    def _from_cookie(self, ack: TcpRepr, remote: Endpoint, now: float) -> ListenResult | None:
        """The connection an ACK with a valid cookie completes: rebuilt from the SYN the
        cookie stands for and driven through the handshake as if it had been kept. While
        established connections fill the backlog the ACK is dropped (the client's next
        segment repeats it, as with Linux); None when the cookie is not ours."""
        assert self._cookies is not None
        client_isn = (ack.seq - 1) & SEQ_MASK
        cookie = (ack.ack - 1) & SEQ_MASK
        mss = self._cookies.check(self.local, remote, client_isn, cookie, now)
        if mss is None:
            self.syncookies_failed += 1
            return None
        if sum(1 for c in self._children if c.state is not TcpState.SYN_RECEIVED) >= self.backlog:
            self.syns_dropped += 1
            return ListenResult()
        tsecr = ack.timestamp[1] if ack.timestamp is not None else None
        wscale, sack = decode_ts_options(tsecr)
        syn = TcpRepr(
            src_port=ack.src_port,
            dst_port=ack.dst_port,
            seq=client_isn,
            ack=0,
            flags=TcpFlags.SYN,
            window=ack.window,
            mss=mss,
            window_scale=wscale,
            sack_permitted=sack,
            timestamp=(ack.timestamp[0], 0) if ack.timestamp is not None else None,
        )
        conn = self._child(syn, remote, cookie, now)
        conn.poll(now)  # the SYN-ACK, sent already as the cookie: discarded
        conn.receive_segment(ack, now)
        if conn.state is TcpState.SYN_RECEIVED or conn.state is TcpState.CLOSED:
            self.syncookies_failed += 1
            return None
        self.syncookies_validated += 1
        self._children.append(conn)
        return ListenResult(connection=conn)

    def accept(self) -> TcpConnection | None:
        """The oldest child that completed its handshake, removed from the backlog."""
        self._prune()
        for i, conn in enumerate(self._children):
            if conn.state in _ACCEPTABLE or (conn.state is TcpState.CLOSED and conn.recv_available):
                del self._children[i]
                return conn
        return None

    @property
    def pending(self) -> int:
        """Children in the backlog (handshaking or waiting for `accept`)."""
        self._prune()
        return len(self._children)

    def _prune(self) -> None:
        """Forget children that died before being accepted (reset, timed out)."""
        self._children = [
            c for c in self._children if c.state is not TcpState.CLOSED or c.recv_available
        ]

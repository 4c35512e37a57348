"""Passive open: the LISTEN state and the backlog (RFC 9293 sections 3.10.1 and 3.10.7.2).

The stack owns demultiplexing: it looks a segment up by 4-tuple first and hands it to the
listener of the local endpoint only when no connection matches. A SYN then yields a new
`TcpConnection` in SYN-RECEIVED, which the stack registers under its 4-tuple and polls like any
other; the listener keeps a reference to it so that `accept()` can hand it to the application
once the handshake completes. Nothing here touches sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .config import TcpConfig
from .connection import TcpConnection
from .reset import reset_for
from .state import TcpState

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


class TcpListener:
    """A listening endpoint with a bounded backlog of not-yet-accepted connections."""

    def __init__(
        self,
        local: Endpoint,
        config: TcpConfig | None = None,
        *,
        isn: IsnFunction,
        ts_offset: TsOffsetFunction | None = None,
        backlog: int = 128,
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
        self.syns_dropped = 0

    def receive_segment(self, seg: TcpRepr, remote: Endpoint, now: float) -> ListenResult:
        """Process a segment for which no connection exists (RFC 9293 section 3.10.7.2)."""
        flags = seg.flags
        if flags & TcpFlags.RST:
            return ListenResult()  # first: an incoming RST is ignored
        if flags & TcpFlags.ACK:
            return ListenResult(reply=reset_for(seg))  # second: <SEQ=SEG.ACK><CTL=RST>
        if not flags & TcpFlags.SYN:
            return ListenResult()  # fourth: anything else is dropped
        self._prune()
        if len(self._children) >= self.backlog:
            # Like Linux without SYN cookies: drop, the peer retransmits its SYN later.
            self.syns_dropped += 1
            return ListenResult()
        ts_offset = self._ts_offset(self.local, remote) if self._ts_offset is not None else 0
        conn = TcpConnection.accept_syn(
            seg,
            local=self.local,
            remote=remote,
            config=self.config,
            isn=self._isn(self.local, remote, now),
            now=now,
            ts_offset=ts_offset,
        )
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

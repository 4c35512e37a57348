"""Sans-I/O TCP: a connection state machine that takes segments and time and returns segments
and events (RFC 9293, 5681, 6582, 6298, 7323, 2018, 5961, 6528).

The public surface is re-exported here. The event-driven lossy-link simulator the tests and
benchmarks drive it with lives outside the layers, in `guest.testing.tcp_sim`.
"""

from .config import TcpConfig
from .connection import TcpConnection, TcpStateError
from .events import (
    TERMINAL_TCP_EVENTS,
    TcpClosed,
    TcpConnected,
    TcpConnectionFailed,
    TcpDataReceived,
    TcpEvent,
    TcpPeerClosed,
    TcpReset,
    TcpSendSpaceAvailable,
)
from .isn import IsnGenerator, rfc6528_isn, timestamp_offset
from .listener import ListenResult, TcpListener
from .reset import reset_for
from .state import TcpState
from .stats import TcpStats

__all__ = [
    "TERMINAL_TCP_EVENTS",
    "IsnGenerator",
    "ListenResult",
    "TcpClosed",
    "TcpConfig",
    "TcpConnected",
    "TcpConnection",
    "TcpConnectionFailed",
    "TcpDataReceived",
    "TcpEvent",
    "TcpListener",
    "TcpPeerClosed",
    "TcpReset",
    "TcpSendSpaceAvailable",
    "TcpState",
    "TcpStateError",
    "TcpStats",
    "reset_for",
    "rfc6528_isn",
    "timestamp_offset",
]

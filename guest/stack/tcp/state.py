"""The TCP connection states of RFC 9293 section 3.3.2."""

from __future__ import annotations

from enum import Enum


class TcpState(Enum):
    """Connection states; LISTEN belongs to `TcpListener`, every other one to `TcpConnection`."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value


#: States in which the application may still queue data (RFC 9293 section 3.10.2: SEND is
#: queued in SYN-SENT/SYN-RECEIVED and refused once the local side has closed).
CAN_SEND = frozenset(
    {TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT}
)

#: States in which the peer may still send us data (we have not seen its FIN).
CAN_RECEIVE = frozenset(
    {TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2}
)

#: States in which our send sequence space is synchronized and segments carrying data or FIN may
#: be (re)transmitted.
TRANSMITTING = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.CLOSE_WAIT,
        TcpState.FIN_WAIT_1,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
    }
)

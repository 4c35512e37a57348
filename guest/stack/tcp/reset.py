"""Replies to segments that match no connection (RFC 9293 section 3.10.7.1, "CLOSED state").

The stack calls `reset_for` when its demultiplexer finds neither a connection nor a listener;
connections in CLOSED and listeners receiving a stray ACK use the same rules.
"""

from __future__ import annotations

from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .seq import SEQ_MASK


def reset_for(seg: TcpRepr) -> TcpRepr | None:
    """The RST answering `seg`, or None when no reply is allowed.

    - An incoming RST is never answered (it would start an RST war).
    - If the ACK bit is off: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    - If the ACK bit is on: <SEQ=SEG.ACK><CTL=RST>.
    """
    flags = seg.flags
    if flags & TcpFlags.RST:
        return None
    if flags & TcpFlags.ACK:
        return TcpRepr(
            src_port=seg.dst_port,
            dst_port=seg.src_port,
            seq=seg.ack & SEQ_MASK,
            ack=0,
            flags=TcpFlags.RST,
            window=0,
        )
    return TcpRepr(
        src_port=seg.dst_port,
        dst_port=seg.src_port,
        seq=0,
        ack=(seg.seq + seg.segment_len()) & SEQ_MASK,
        flags=TcpFlags.RST | TcpFlags.ACK,
        window=0,
    )

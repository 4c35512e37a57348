"""Header prediction: the short path for the segments a busy connection mostly receives.

Van Jacobson's TCP fast path (as in 4.4BSD's tcp_input and Linux's tcp_rcv_established): on an
ESTABLISHED connection with nothing unusual going on, the next segment is almost always the
next in-order data (a receiver), a pure ACK of new data (a sender), or both at once (a
request/response exchange, where each side's data acknowledges the other's). `predicted`
recognises exactly those, under conditions in which every check of the full path
(`TcpConnection._arrive`, RFC 9293 section 3.10.7.4) has a known outcome, and applies only the
effects the full path would have, in the same order. Anything else returns False before it has
changed anything, and the segment takes the full path.

The full path stays the specification: this module is an optimisation of it and must never
disagree with it. `tests/unit/test_tcp_fastpath.py` runs seeded lossy transfers with the fast
path shadowed by the full path on a copy of the connection, segment by segment, and requires
the same state, segments out, events and counters; `TcpConfig.fast_path=False` (the stacks'
`--tcp-disable fast-path`) turns it off, and with it its sending side, `TcpConnection._idle`,
which lets `poll` skip the output path when nothing waits to be sent (shadowed the same way).

Why it pays in Python: the full path makes a dozen method calls per segment to reach the same
few assignments (each check, then the ACK, window, RACK, PRR and text steps), and a call costs
more than the assignment it guards; under TCG the interpreter's overhead is multiplied again.
"""

from __future__ import annotations

from typing import Any

from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .seq import SEQ_MASK, seq_lt, unwrap
from .state import TcpState

#: A `connection.TcpConnection`. Not imported, even for type checking: connection.py imports
#: this module, and the import contracts allow no cycle, whatever guards it.
Connection = Any

_ACK = int(TcpFlags.ACK)
_ACK_PSH = int(TcpFlags.ACK | TcpFlags.PSH)
_ESTABLISHED = TcpState.ESTABLISHED


def predicted(conn: Connection, seg: TcpRepr, now: float) -> bool:
    """Process `seg` on the fast path if header prediction holds; False (nothing changed)
    when the segment needs the full path.

    The prediction: ESTABLISHED; only ACK (and PSH) set; no SACK blocks; SEG.SEQ = RCV.NXT;
    a timestamp that PAWS accepts; SND.UNA <= SEG.ACK <= SND.MAX, and if the segment carries
    no data, an ACK of new data (a duplicate ACK counts toward fast retransmit, and a window
    update without one is judged by the full path); no loss recovery, SACK
    scoreboard, RACK timer or tail loss probe under way; no FIN sent or received; data, if
    any, in order with no gap behind it and wholly inside the window we advertised.
    """
    flags = int(seg.flags)
    if (flags != _ACK and flags != _ACK_PSH) or conn.state is not _ESTABLISHED:
        return False
    rcv_nxt = conn.rcv_nxt
    if seg.seq != rcv_nxt & SEQ_MASK or seg.sack_blocks:
        return False
    ts = seg.timestamp
    if conn._ts_enabled and (ts is None or seq_lt(ts[0], conn._ts_recent)):
        return False
    snd_una = conn.snd_una
    ack = unwrap(seg.ack, snd_una)
    payload = seg.payload
    plen = len(payload)
    if ack < snd_una or ack > conn.snd_max or (ack == snd_una and not plen):
        return False
    cc = conn._cc
    if (
        conn._sb
        or cc.in_recovery
        or conn._rack_deadline is not None
        or conn._tlp_end is not None
        or conn._fin_seq is not None
    ):
        return False
    if plen and (
        rcv_nxt + plen > conn.rcv_adv or conn._rcv_fin_seq is not None or conn._rx.has_ooo
    ):
        return False

    # The prediction holds: the full path's effects, in its order.
    conn._last_rx_time = now
    conn._ka_probes = 0
    if conn._ts_enabled and rcv_nxt <= conn._last_ack_sent:
        conn._ts_recent = ts[0]  # type: ignore[index]  # checked above
        conn._ts_recent_time = now
    if ack > snd_una:
        conn._on_new_ack(seg, ack, now)
        if conn._rack_on:
            conn._rack_on_ack(seg, ack, snd_una, now)
    conn._prr = None  # PRR keeps state only inside a recovery
    conn._update_send_window(rcv_nxt, ack, seg.window << conn._snd_wscale)
    conn._persist_unanswered = 0
    if conn.snd_wnd == 0:
        conn._retries = 0
    if plen:
        _take_in_order(conn, payload, plen, flags == _ACK_PSH, now)
    return True


def _take_in_order(
    conn: Connection, payload: bytes | memoryview, plen: int, psh: bool, now: float
) -> None:
    """`TcpConnection._take_text` for in-order text that fits the window, with no gap to fill."""
    if plen > conn._rcv_mss:
        conn._rcv_mss = min(plen, conn.config.mss)
    delivered = conn._rx.write(conn.rcv_nxt - conn._rcv_base, payload)
    if delivered:
        conn._on_delivered(delivered, False, psh, now)

"""One TCP connection as a sans-I/O state machine (RFC 9293 plus the RFCs named per method).

Inputs are segments (`receive_segment`), application calls (`connect`, `send`, `recv`, `close`,
`abort`) and time (`poll(now)`); outputs are segments returned by `poll` and events drained with
`events()`. There are no sockets, clocks, threads or randomness inside, so the same object can
run in a monolithic stack, be driven across processes, or be simulated with a fake clock.

Calling convention, as in h11: after *any* input (a segment, an API call) the owner calls
`poll(now)` and transmits what it returns; between inputs it sleeps until `next_timeout()`
and then calls `poll` again.

Internally every sequence number is an unbounded Python int: incoming 32-bit values are
unwrapped next to RCV.NXT or SND.UNA (`seq.unwrap`) and wrapped again only when a segment is
built, so comparisons are plain integer comparisons with no modular pitfalls.
"""

from __future__ import annotations

from collections.abc import Hashable

from guest.stack.wire.tcp import TcpFlags, TcpRepr

from .config import TcpConfig
from .congestion import CcAction
from .controllers import CONGESTION_CONTROLS
from .events import (
    TcpClosed,
    TcpConnected,
    TcpConnectionFailed,
    TcpDataReceived,
    TcpEvent,
    TcpPeerClosed,
    TcpReset,
    TcpSendSpaceAvailable,
)
from .fastpath import predicted
from .options import Negotiated, max_sack_blocks, negotiate, sack_option_space, window_shift_for
from .prr import Prr
from .rack import Rack, SentLog, probe_timeout
from .recvbuf import ReceiveBuffer
from .reset import reset_for
from .rto import RtoEstimator
from .scoreboard import SackScoreboard
from .sendbuf import BytesLike, SendBuffer
from .seq import SEQ_MASK, seq_lt, unwrap
from .state import CAN_RECEIVE, CAN_SEND, TRANSMITTING, TcpState
from .stats import TcpStats

Endpoint = tuple[Hashable, int]

# Plain ints for the hot paths; TcpFlags values are built once per combination below.
_FIN = int(TcpFlags.FIN)
_SYN = int(TcpFlags.SYN)
_RST = int(TcpFlags.RST)
_PSH = int(TcpFlags.PSH)
_ACK = int(TcpFlags.ACK)
_FLAGS = [TcpFlags(i) for i in range(256)]

#: RFC 7323 section 5.5: TS.Recent is trusted for PAWS for at most 24 days of idleness.
_PAWS_IDLE = 24 * 24 * 3600.0
#: TSval ticks per second (RFC 7323 section 5.4 recommends 1 ms to 1 s; Linux uses 1 ms).
_TS_HZ = 1000

_ESTABLISHED = TcpState.ESTABLISHED
_CLOSED = TcpState.CLOSED


class TcpStateError(RuntimeError):
    """An application call that the current state does not allow (RFC 9293 section 3.10)."""


class TcpConnection:
    """A TCP connection's TCB and the rules that drive it."""

    # ------------------------------------------------------------------ construction

    def __init__(
        self,
        local: Endpoint,
        remote: Endpoint,
        config: TcpConfig | None = None,
        *,
        isn: int,
        ts_offset: int = 0,
    ) -> None:
        """Create a connection in CLOSED; `connect()` opens it actively.

        `isn` is the initial send sequence number (see `isn.rfc6528_isn`); `ts_offset` is added
        to every TSval (RFC 7323 section 5.4). Both come from the caller so that nothing inside
        is random.
        """
        cfg = config if config is not None else TcpConfig()
        self.config = cfg
        self.local = local
        self.remote = remote
        self.state = TcpState.CLOSED
        self._passive = False
        self._opened = False
        self._events: list[TcpEvent] = []
        self._stats = TcpStats()
        self._fast_path = cfg.fast_path

        iss = isn & SEQ_MASK
        self.iss = iss
        # Send sequence space (RFC 9293 section 3.3.1), unbounded ints. SND.MAX is the highest
        # sequence number sent so far; SND.NXT falls back to SND.UNA after a timeout.
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = iss
        self.max_snd_wnd = 0
        # Receive sequence space; RCV.ADV is the right edge we advertised (RCV.NXT + RCV.WND).
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self._rcv_base = 0  # sequence number of stream offset 0 (IRS + 1)

        self._tx = SendBuffer(cfg.send_buffer_size)
        self._tx_seq = iss + 1  # sequence number of the first byte in _tx
        self._rx = ReceiveBuffer(cfg.recv_buffer_size)

        # Negotiated options (defaults until the handshake says otherwise).
        self._snd_wscale = 0
        self._rcv_wscale = 0
        self._ws_enabled = False
        self._ts_enabled = False
        self._sack_enabled = False
        self._max_sack = 0
        self._send_mss = max(min(cfg.default_peer_mss, cfg.mss), 1)
        self._mss = self._send_mss
        self._rcv_mss = min(536, cfg.mss)  # estimate of the peer's segment size
        self._rcv_sws = max(1, min(cfg.recv_buffer_size // 2, cfg.mss))
        self._ts_offset = ts_offset & SEQ_MASK
        self._ts_recent = 0
        self._ts_recent_time = 0.0
        self._last_ack_sent = 0

        self._rto = RtoEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto, cfg.clock_granularity)
        self._cc = CONGESTION_CONTROLS[cfg.cc](self._mss, cfg.initial_window, iss)
        self._sb = SackScoreboard()

        # Timers: absolute deadlines in the caller's time, None when stopped.
        self._rtx_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._delack_deadline: float | None = None
        self._timewait_deadline: float | None = None
        self._persist_backoff = 0
        self._persist_unanswered = 0
        self._ka_probes = 0
        self._ka_last_probe = 0.0
        self._last_rx_time = 0.0
        self._last_send_time: float | None = None

        # Pending output.
        self._syn_pending = False
        self._ack_now = False
        self._rtx_head = False
        self._rtx_head_timeout = False
        self._force_send = False
        self._ctl: list[TcpRepr] = []

        # Connection teardown.
        self._fin_seq: int | None = None  # sequence number of our FIN once close() was called
        self._rcv_fin_seq: int | None = None  # sequence number of the peer's FIN once seen
        self._fin_received = False

        # Loss detection and RTT measurement.
        self._retries = 0
        self._syn_retransmitted = False
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        # Retransmission episode for timestamp-based Karn: data below `_rtx_episode_end` was
        # (partly) retransmitted, most recently at TSval `_rtx_episode_ts`.
        self._rtx_episode_end: int | None = None
        self._rtx_episode_ts = 0
        # RFC 6675 HighRxt: highest sequence number retransmitted in this SACK recovery.
        self._high_rxt = iss
        # RFC 8985 RACK-TLP, once SACK is negotiated: every segment's last transmit time, the
        # reordering timer, the probe timer and the probe in flight (its end, and whether it
        # resent data rather than sending new).
        self._rack_on = False
        self._log = SentLog()
        self._rack = Rack()
        self._rack_deadline: float | None = None
        self._tlp_deadline: float | None = None
        self._tlp_end: int | None = None
        self._tlp_retrans = False
        self._tlp_rearm = False  # new data went out or an ACK came: schedule the probe anew
        self._rack_fast_rtx = False  # a recovery just began: its first resend ignores pipe
        # RFC 6937 PRR state of the SACK recovery under way (None outside one).
        self._prr: Prr | None = None
        self._rcv_unacked = 0
        self._send_blocked = False
        self._challenge_epoch = float("-inf")
        self._last_oow_ack = float("-inf")
        self._challenge_count = 0

    @classmethod
    def accept_syn(
        cls,
        syn: TcpRepr,
        *,
        local: Endpoint,
        remote: Endpoint,
        config: TcpConfig | None = None,
        isn: int,
        now: float,
        ts_offset: int = 0,
    ) -> TcpConnection:
        """Passive open: a LISTEN socket received `syn` (RFC 9293 section 3.10.7.2).

        Returns a connection in SYN-RECEIVED whose next `poll` emits the SYN-ACK. Any payload in
        the SYN is not acknowledged (no TCP Fast Open): the peer will resend it, as with Linux.
        """
        flags = int(syn.flags)
        if not flags & _SYN or flags & (_ACK | _RST):
            raise ValueError("accept_syn needs a segment with SYN and without ACK/RST")
        conn = cls(local, remote, config, isn=isn, ts_offset=ts_offset)
        conn._opened = True
        conn._passive = True
        conn._stats.segments_in += 1
        conn._take_peer_syn(syn, now)
        conn.snd_wl1 = conn.irs
        conn.state = TcpState.SYN_RECEIVED
        conn._syn_pending = True
        return conn

    # ------------------------------------------------------------------ application API

    def connect(self) -> None:
        """Active open (RFC 9293 section 3.10.1): send a SYN at the next `poll`."""
        if self._opened:
            raise TcpStateError("connection already opened")
        self._opened = True
        self.state = TcpState.SYN_SENT
        self._syn_pending = True

    def send(self, data: BytesLike) -> int:
        """Queue bytes for transmission; return how many the bounded buffer accepted.

        Non-blocking: when fewer bytes than offered are taken, a `TcpSendSpaceAvailable` event
        follows once acknowledgments free space. Data queued before the handshake completes is
        sent after it (RFC 9293 section 3.10.2).
        """
        if self.state not in CAN_SEND or self._fin_seq is not None:
            raise TcpStateError(f"cannot send in state {self.state} after close")
        n = self._tx.write(data)
        if n < len(data):
            self._send_blocked = True
        return n

    def recv(self, max_bytes: int = -1) -> bytes:
        """Take up to `max_bytes` in-order received bytes (all when negative); b"" if none.

        End of stream is reported by the `TcpPeerClosed` event and `at_eof`, not by b"".
        A read changes nothing a `poll` acts on, except that it may owe the peer a window
        update: the one input after which the owner may skip `poll` if `ack_pending` is False.
        """
        data = self._rx.recv(max_bytes)
        if data:
            self._after_read()
        return data

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Copy in-order received bytes into `buffer`; return the count."""
        n = self._rx.recv_into(buffer)
        if n:
            self._after_read()
        return n

    def close(self) -> None:
        """Graceful close: FIN after the queued data (RFC 9293 section 3.10.4).

        Idempotent; closing a connection that is already closing does nothing.
        """
        st = self.state
        if st is TcpState.SYN_SENT:
            self._enter_closed(TcpClosed())
        elif st in (TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            if self._fin_seq is None:
                self._fin_seq = self._tx_seq + len(self._tx)
            if st is TcpState.ESTABLISHED:
                self.state = TcpState.FIN_WAIT_1
            elif st is TcpState.CLOSE_WAIT:
                self.state = TcpState.LAST_ACK
            # SYN-RECEIVED: the FIN waits until ESTABLISHED is reached (section 3.10.4).

    def abort(self) -> None:
        """Abort (RFC 9293 section 3.10.5): send <SEQ=SND.NXT><CTL=RST> where one is due."""
        st = self.state
        if st is _CLOSED:
            return
        if st in (
            TcpState.SYN_RECEIVED,
            TcpState.ESTABLISHED,
            TcpState.FIN_WAIT_1,
            TcpState.FIN_WAIT_2,
            TcpState.CLOSE_WAIT,
        ):
            self._ctl.append(self._bare(self._ack_seq(), 0, _RST))
        self._rx.clear()
        self._enter_closed(TcpClosed())

    def events(self) -> list[TcpEvent]:
        """Drain the events produced since the last call."""
        ev = self._events
        self._events = []
        return ev

    def poll(self, now: float) -> list[TcpRepr]:
        """Run expired timers and return every segment that should be transmitted now."""
        out: list[TcpRepr] = []
        # The probe first: its timer is never set later than the retransmission timer, and
        # when both are due the probe (which re-arms that timer) is RFC 8985's answer.
        if self._tlp_deadline is not None and now >= self._tlp_deadline:
            self._on_probe_timeout(now, out)
        if self._rtx_deadline is not None and now >= self._rtx_deadline:
            self._on_rto(now)
        if self._rack_deadline is not None and now >= self._rack_deadline:
            self._rack_deadline = None
            self._rack_detect(now)
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._on_persist(now, out)
        if self._delack_deadline is not None and now >= self._delack_deadline:
            self._delack_deadline = None
            self._ack_now = True
        if self.config.keepalive_idle is not None:
            self._check_keepalive(now, out)
        if self._timewait_deadline is not None and now >= self._timewait_deadline:
            self._timewait_deadline = None
            self._enter_closed(TcpClosed())
        if self._ctl:
            out.extend(self._ctl)
            self._ctl.clear()
        st = self.state
        if st is not _CLOSED:
            if self._syn_pending:
                self._syn_pending = False
                out.append(self._syn_segment(now))
            if st in TRANSMITTING:
                if self._fast_path and self._idle(now):
                    pass  # nothing to send or resend: `_output`'s outcome, found sooner
                else:
                    self._output(now, out)
                if self._rack_on:
                    self._arm_probe(now)
            if self._ack_now and st is not TcpState.SYN_SENT:
                out.append(self._segment(self._ack_seq(), _ACK, b"", now))
        self._stats.segments_out += len(out)
        return out

    def next_timeout(self) -> float | None:
        """The latest time at which `poll` must run again, or None if no timer is armed."""
        best: float | None = None
        for deadline in (
            self._rtx_deadline,
            self._rack_deadline,
            self._tlp_deadline,
            self._persist_deadline,
            self._delack_deadline,
            self._timewait_deadline,
            self._keepalive_deadline(),
        ):
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    # ------------------------------------------------------------------ introspection

    @property
    def stats(self) -> TcpStats:
        """Counters, with the RTT/cwnd gauges refreshed."""
        s = self._stats
        s.srtt = self._rto.srtt
        s.rttvar = self._rto.rttvar
        s.rto = self._rto.rto
        s.cwnd = self._cc.cwnd
        s.ssthresh = self._cc.ssthresh
        s.snd_wnd = self.snd_wnd
        return s

    @property
    def ack_pending(self) -> bool:
        """An ACK waits to go out at the next `poll` (after a read: a window update)."""
        return self._ack_now

    @property
    def send_space(self) -> int:
        """Bytes `send` would accept now."""
        return self._tx.free

    @property
    def send_queued(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return len(self._tx)

    @property
    def recv_available(self) -> int:
        """In-order bytes `recv` can return now."""
        return self._rx.ready_len

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it has been read."""
        return self._fin_received and self._rx.ready_len == 0

    @property
    def is_closed(self) -> bool:
        """In CLOSED (the terminal event has been emitted, or it never opened)."""
        return self.state is _CLOSED

    @property
    def mss(self) -> int:
        """Effective send MSS: payload bytes per full segment (RFC 9293 3.7.1 Eff.snd.MSS)."""
        return self._mss

    @property
    def negotiated(self) -> dict[str, object]:
        """Options in force, for tests and reports."""
        return {
            "mss": self._mss,
            "send_mss": self._send_mss,
            "window_scaling": self._ws_enabled,
            "snd_wscale": self._snd_wscale,
            "rcv_wscale": self._rcv_wscale,
            "timestamps": self._ts_enabled,
            "sack": self._sack_enabled,
        }

    def __repr__(self) -> str:
        return f"<TcpConnection {self.local}->{self.remote} {self.state}>"

    # ------------------------------------------------------------------ segment arrival

    def receive_segment(self, seg: TcpRepr, now: float) -> None:
        """Process one inbound segment (RFC 9293 section 3.10.7). Call `poll` afterwards."""
        self._stats.segments_in += 1
        if self._fast_path and predicted(self, seg, now):
            return  # header prediction (fastpath.py): the full path's outcome, found sooner
        st = self.state
        if st is TcpState.SYN_SENT:
            self._arrive_syn_sent(seg, now)
        elif st is _CLOSED:
            rst = reset_for(seg)
            if rst is not None:
                self._ctl.append(rst)
        else:
            self._arrive(seg, now)

    def _arrive_syn_sent(self, seg: TcpRepr, now: float) -> None:
        """RFC 9293 section 3.10.7.3 (SYN-SENT), with RFC 5961 section 3.2 for RSTs."""
        flags = int(seg.flags)
        ack = 0
        ack_ok = False
        if flags & _ACK:
            ack = unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & _RST:
                    self._ctl.append(reset_for(seg))  # <SEQ=SEG.ACK><CTL=RST>
                return
            ack_ok = True
        if flags & _RST:
            if ack_ok:
                self._enter_closed(TcpReset())  # "error: connection reset" (refused)
            return
        if not flags & _SYN:
            return
        self._take_peer_syn(seg, now)
        self.snd_wl1 = self.irs
        if not ack_ok:
            # Simultaneous open: answer with SYN-ACK (our SYN stays outstanding).
            self.state = TcpState.SYN_RECEIVED
            self._syn_pending = True
            return
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        self.snd_wl2 = ack
        if not self._syn_retransmitted:
            # After a resent SYN, a SYN-ACK cannot be timed: the peer may have resent it on
            # its own timer, echoing our latest SYN a whole SYN-ACK timeout late. The first
            # ACK of data gives a clean sample one round trip later (RFC 6298 section 5.7
            # holds the RTO at 3 s until then).
            self._sample_rtt(seg, ack, now)
        self._rtx_deadline = None
        self._retries = 0
        self._rto.reset_backoff()
        self._established()
        self._ack_now = True
        if seg.payload or flags & _FIN:
            # Section 3.10.7.3: continue with the text and FIN of the SYN-ACK.
            self._process_text(
                self.irs + 1, seg.payload, bool(flags & _FIN), bool(flags & _PSH), now
            )

    def _take_peer_syn(self, syn: TcpRepr, now: float) -> None:
        """Record IRS and the negotiated options from the peer's SYN or SYN-ACK."""
        self.irs = syn.seq & SEQ_MASK
        self.rcv_nxt = self.irs + 1
        self._rcv_base = self.rcv_nxt
        self._last_ack_sent = self.rcv_nxt
        self._apply_negotiation(negotiate(self.config, syn))
        # What our own SYN(-ACK) offers is the right edge until the first scaled update.
        self.rcv_adv = self.rcv_nxt + min(self._rx.capacity, 0xFFFF)
        if self._ts_enabled and syn.timestamp is not None:
            self._ts_recent = syn.timestamp[0]
            self._ts_recent_time = now
        # The window of a SYN is never scaled (RFC 7323 section 2.2).
        self.snd_wnd = syn.window
        self.max_snd_wnd = syn.window
        self._last_rx_time = now

    def _apply_negotiation(self, neg: Negotiated) -> None:
        self._ws_enabled = neg.window_scaling
        self._snd_wscale = neg.snd_wscale
        self._rcv_wscale = neg.rcv_wscale
        self._ts_enabled = neg.timestamps
        self._sack_enabled = neg.sack
        self._max_sack = max_sack_blocks(neg.timestamps) if neg.sack else 0
        self._rack_on = neg.sack and self.config.sack_recovery and self.config.rack
        self._send_mss = neg.send_mss
        self._mss = max(neg.payload_mss, 1)

    def _arrive(self, seg: TcpRepr, now: float) -> None:
        """RFC 9293 section 3.10.7.4: SYN-RECEIVED and the synchronized states, check by check."""
        flags = int(seg.flags)
        payload = seg.payload
        plen = len(payload)
        seq = unwrap(seg.seq, self.rcv_nxt)
        if flags & _SYN and self.state is TcpState.SYN_RECEIVED and seq == self.irs:
            seq_flags = self._syn_in_syn_received(seq, flags)
            if seq_flags is None:
                return
            seq, flags = seq_flags
        if self._ts_enabled and self._timestamp_rejects(seg.timestamp, flags, plen, now):
            return
        # First check: sequence number acceptability.
        if not self._seq_acceptable(seq, plen, flags):
            self._reject_unacceptable(seq, plen, flags, now)
            return
        self._last_rx_time = now
        self._ka_probes = 0
        # Second check: RST. (The third, IP security compartments, does not apply.)
        if flags & _RST:
            self._on_rst(seq, now)
            return
        # Fourth check: SYN.
        if flags & _SYN:
            self._on_syn(now)
            return
        # Fifth check: ACK; a segment without one is dropped.
        if not flags & _ACK or not self._check_ack(seg, seq, plen, flags, now):
            return
        st = self.state
        if st is _CLOSED or st is TcpState.TIME_WAIT:
            return
        # Sixth check (URG) is not supported: RFC 6093 discourages new uses of it.
        # Seventh and eighth: segment text and FIN.
        if (plen or flags & _FIN) and st in CAN_RECEIVE:
            self._process_text(seq, payload, bool(flags & _FIN), bool(flags & _PSH), now)

    def _syn_in_syn_received(self, seq: int, flags: int) -> tuple[int, int] | None:
        """The peer's SYN again while in SYN-RECEIVED; returns the (SEG.SEQ, flags) to go on
        with, or None when the segment has been dealt with.

        A bare SYN is a retransmission: our SYN-ACK was lost, so resend it (as Linux does)
        rather than challenge it. A SYN-ACK is the peer's half of a simultaneous open (RFC 9293
        figure 8): its SYN is old news, its ACK completes our half of the handshake.
        """
        if not flags & (_ACK | _RST | _FIN):
            if not self._syn_pending:  # one more SYN-ACK on the wire: a resend, counted
                self._stats.retransmits_fast += 1
            self._syn_pending = True
            return None
        if flags & _ACK and not flags & _RST:
            return seq + 1, flags & ~_SYN
        return seq, flags

    def _timestamp_rejects(
        self, ts: tuple[int, int] | None, flags: int, plen: int, now: float
    ) -> bool:
        """Whether RFC 7323 drops the segment before the sequence check, once timestamps are
        in use: a non-RST segment without TSopt (section 3.2), or an old duplicate whose TSval
        went backwards (PAWS, section 5.3 R1), which is acknowledged."""
        if ts is None:
            return not flags & _RST
        if (
            self.config.paws
            and not flags & _RST
            and seq_lt(ts[0], self._ts_recent)
            and now - self._ts_recent_time <= _PAWS_IDLE
        ):
            self._stats.unacceptable_in += 1
            self._oow_ack(now, plen)
            return True
        return False

    def _seq_acceptable(self, seq: int, plen: int, flags: int) -> bool:
        """RFC 9293 section 3.10.7.4 first check: does the segment fall in the receive window?

        Two departures from the RFC's table, both as Linux's tcp_sequence() does, are noted
        where they apply.
        """
        rcv_nxt = self.rcv_nxt
        wnd = self.rcv_adv - rcv_nxt
        seglen = plen + (1 if flags & _SYN else 0) + (1 if flags & _FIN else 0)
        if wnd <= 0:
            # Zero window: only SEG.SEQ = RCV.NXT is acceptable; data in such a segment is
            # trimmed away later, but its ACK and RST are still processed ("special
            # allowance" in section 3.10.7.4).
            return seq == rcv_nxt
        if seglen == 0:
            # Inclusive right edge: a peer that filled our window sends its ACKs with
            # SEG.SEQ = RCV.NXT + RCV.WND once the data in flight is lost, and the RFC's strict
            # test would discard exactly those ACKs.
            return rcv_nxt <= seq <= rcv_nxt + wnd
        # Any overlap with the window. The RFC's test looks only at the first and last octet
        # and so rejects a segment that spans the whole window (a full-sized retransmission
        # into a tiny window).
        return seq < rcv_nxt + wnd and seq + seglen > rcv_nxt

    def _reject_unacceptable(self, seq: int, plen: int, flags: int, now: float) -> None:
        """Answer a segment that failed the first check (RFC 9293 section 3.10.7.4).

        An RST is dropped silently; anything else gets <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>,
        and a retransmitted FIN in TIME-WAIT (our last ACK was lost) restarts the 2*MSL wait.
        """
        if flags & _RST:
            return
        self._stats.unacceptable_in += 1
        self._oow_ack(now, plen or flags & _FIN)
        rcv_nxt = self.rcv_nxt
        if (
            self.state is TcpState.TIME_WAIT
            and flags & _FIN
            and seq + plen + 1 == rcv_nxt
            and self._timewait_deadline is not None
        ):
            self._timewait_deadline = now + 2 * self.config.msl
        if plen and seq + plen <= rcv_nxt:
            self._stats.duplicate_segments_in += 1

    def _on_rst(self, seq: int, now: float) -> None:
        """Second check, an in-window RST (RFC 5961 section 3.2): only one exactly at RCV.NXT
        resets the connection; any other is answered with a challenge ACK, which a genuine
        peer answers with an exact RST and a blind attacker cannot. RFC 1337, when enabled,
        protects TIME-WAIT from assassination."""
        if self.state is TcpState.TIME_WAIT and self.config.rfc1337:
            return
        if seq == self.rcv_nxt:
            self._reset_by_peer()
        else:
            self._challenge_ack(now)

    def _on_syn(self, now: float) -> None:
        """Fourth check, an in-window SYN: a passive open in SYN-RECEIVED "returns to LISTEN"
        (the listener forgets it); otherwise RFC 5961 section 4.2 answers with a challenge ACK
        instead of RFC 793's reset, so that a blind SYN cannot tear the connection down."""
        if self.state is TcpState.SYN_RECEIVED and self._passive:
            self._enter_closed(TcpReset())
        else:
            self._challenge_ack(now)

    def _check_ack(self, seg: TcpRepr, seq: int, plen: int, flags: int, now: float) -> bool:
        """Fifth check, the ACK field (RFC 9293 section 3.10.7.4); False drops the segment.

        In SYN-RECEIVED an acceptable ACK completes the handshake first. An ACK of data not
        yet sent, or one older than the largest window the peer offered (RFC 5961 section
        5.2), is answered with a (rate-limited) challenge ACK and goes no further.
        """
        ts = seg.timestamp
        if (
            ts is not None
            and self._ts_enabled
            and seq <= self._last_ack_sent
            and not seq_lt(ts[0], self._ts_recent)
        ):
            # RFC 7323 section 4.3: remember the TSval to echo.
            self._ts_recent = ts[0]
            self._ts_recent_time = now
        ack = unwrap(seg.ack, self.snd_una)
        if self.state is TcpState.SYN_RECEIVED and not self._complete_handshake(seg, seq, ack):
            return False
        if ack > self.snd_max or ack < self.snd_una - self.max_snd_wnd:
            # RFC 5961 section 5.2, rate-limited as section 7 asks: forged ACKs with wild
            # numbers must not draw an answer each.
            self._challenge_ack(now)
            return False
        self._process_ack(seg, seq, ack, plen, flags, now)
        return True

    def _complete_handshake(self, seg: TcpRepr, seq: int, ack: int) -> bool:
        """SYN-RECEIVED: an ACK of our SYN establishes the connection and takes the peer's
        first (scaled) window; any other ACK is answered with <SEQ=SEG.ACK><CTL=RST>
        (RFC 9293 section 3.10.7.4 fifth check). False when the segment was refused."""
        if not self.snd_una < ack <= self.snd_max:
            self._ctl.append(reset_for(seg))
            return False
        self.snd_wnd = seg.window << self._snd_wscale
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1 = seq
        self.snd_wl2 = ack
        self._established()
        return True

    def _process_ack(
        self, seg: TcpRepr, seq: int, ack: int, plen: int, flags: int, now: float
    ) -> None:
        """ACK field processing for synchronized states (RFC 9293 3.10.7.4 fifth check)."""
        snd_una = self.snd_una
        wnd = seg.window << self._snd_wscale
        sacked_before = self._sb.sacked_bytes if self._sb else 0
        if self._sack_enabled and seg.sack_blocks and ack >= snd_una:
            self._take_sack(seg.sack_blocks, ack)
        if ack > snd_una:
            self._on_new_ack(seg, ack, now)
        elif (
            ack == snd_una
            and plen == 0
            and not flags & (_SYN | _FIN)
            and self.snd_max > snd_una
            and wnd == self.snd_wnd
        ):
            # RFC 5681 section 2 definition of a duplicate acknowledgment.
            self._on_dup_ack()
        if self._rack_on:
            self._rack_on_ack(seg, ack, snd_una, now)
        elif self._sb and self._sack_enabled and self.config.sack_recovery:
            self._check_sack_loss()
        sacked_more = self._sb.sacked_bytes - sacked_before
        self._rate_reduction(max(ack - snd_una, 0) + sacked_more)
        if self._tlp_end is not None and ack >= self._tlp_end:
            self._probe_answered(seg, ack, ack > snd_una or sacked_more > 0 or plen > 0)
        self._update_send_window(seq, ack, wnd)
        self._persist_unanswered = 0
        if self.snd_wnd == 0:
            self._retries = 0  # the peer is alive, only its window is closed
        fin_seq = self._fin_seq
        if fin_seq is not None and self.snd_una > fin_seq:
            self._on_fin_acked(now)

    def _update_send_window(self, seq: int, ack: int, wnd: int) -> None:
        """Take the peer's (scaled) window `wnd` only from a segment newer than the one that
        last set it, by SND.WL1/SND.WL2 (RFC 9293 section 3.10.7.4 fifth check), so that a
        reordered old segment cannot shrink it again."""
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd > 0:
                self._persist_backoff = 0

    def _on_fin_acked(self, now: float) -> None:
        """Our FIN is acknowledged (RFC 9293 section 3.10.7.4 fifth check): FIN-WAIT-1 moves
        to FIN-WAIT-2, CLOSING to TIME-WAIT, and LAST-ACK ends the connection."""
        st = self.state
        if st is TcpState.FIN_WAIT_1:
            self.state = TcpState.FIN_WAIT_2
        elif st is TcpState.CLOSING:
            self._enter_time_wait(now)
        elif st is TcpState.LAST_ACK:
            self._enter_closed(TcpClosed())

    def _take_sack(self, blocks: tuple[tuple[int, int], ...], ack: int) -> None:
        """Record SACK blocks (RFC 2018 section 5) relative to the new cumulative ACK."""
        sb = self._sb
        snd_max = self.snd_max
        for left, right in blocks:
            start = unwrap(left, ack)
            sb.add(start, start + ((right - left) & SEQ_MASK), ack, snd_max)

    def _on_new_ack(self, seg: TcpRepr, ack: int, now: float) -> None:
        """SND.UNA < SEG.ACK <= SND.MAX: new data acknowledged."""
        acked = ack - self.snd_una
        tx_seq = self._tx_seq
        data_end = tx_seq + len(self._tx)
        data_acked = (ack if ack < data_end else data_end) - tx_seq
        if data_acked > 0:
            self._tx.consume(data_acked)
            self._tx_seq = tx_seq + data_acked
            self._stats.bytes_acked += data_acked
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        if self._sb:
            self._sb.prune(ack)
        self._sample_rtt(seg, ack, now)
        action = self._cc.on_new_ack(ack, acked, self.snd_max, now, self._rto.srtt)
        if action and action & CcAction.RETRANSMIT_HEAD and ack < self.snd_max:
            self._rtx_head = True
            self._rtx_head_timeout = False
        self._retries = 0
        self._rto.reset_backoff()
        # RFC 6298 sections 5.2 and 5.3.
        if ack >= self.snd_max:
            self._rtx_deadline = None
        elif not (action and action & CcAction.KEEP_TIMER):
            self._rtx_deadline = now + self._rto.rto
        self._tlp_rearm = True
        if self._send_blocked and data_acked > 0:
            self._send_blocked = False
            self._events.append(TcpSendSpaceAvailable(self._tx.free))

    def _on_dup_ack(self) -> None:
        self._stats.dup_acks_in += 1
        action = self._cc.on_dup_ack(self.snd_una, self.snd_max - self.snd_una, self.snd_max)
        if action & CcAction.RETRANSMIT_HEAD:
            self._stats.fast_recoveries += 1
            self._rtx_head = True
            self._rtx_head_timeout = False
            if self._sack_enabled and self.config.sack_recovery:
                self._cc.enter_sack_recovery(self.snd_max - self.snd_una, self.snd_max)
                self._high_rxt = self.snd_una

    def _check_sack_loss(self) -> None:
        """RFC 6675 section 5 (rule 4 of the ACK processing): enter loss recovery as soon as
        the scoreboard shows SND.UNA's segment lost, even if duplicate ACKs went missing."""
        cc = self._cc
        una = self.snd_una
        if cc.in_recovery or una <= cc.recover or self.snd_max <= una:
            return
        lost_edge = self._sb.lost_boundary(cc.mss)
        if lost_edge is not None and lost_edge > una:
            cc.enter_sack_recovery(self.snd_max - una, self.snd_max)
            self._high_rxt = una
            self._rtx_head = True
            self._rtx_head_timeout = False
            self._stats.fast_recoveries += 1

    def _rate_reduction(self, delivered: int) -> None:
        """RFC 6937: in a SACK recovery, this ACK's window is pipe plus PRR's share of what
        the peer reports delivered (`delivered`: SND.UNA's advance plus the SACKed bytes'
        change). A recovery that began with this ACK starts its PRR state here."""
        cc = self._cc
        if not (cc.in_recovery and cc.sack_mode and self.config.prr):
            self._prr = None
            return
        prr = self._prr
        if prr is None:
            # RecoverFS: the flight when the recovery began, this ACK's deliveries included.
            prr = self._prr = Prr(self.snd_max - self.snd_una + delivered, cc.ssthresh)
        cc.cwnd = prr.on_ack(delivered, self._recovery_pipe(), cc.mss)

    def _recovery_pipe(self) -> int:
        """RFC 6675 pipe, with RACK's losses when RACK finds them."""
        if self._rack_on:
            return self._rack_pipe()
        lost_edge = self._sb.lost_boundary(self._cc.mss) if self._sb else None
        return self._pipe(lost_edge if lost_edge is not None else self.snd_una)

    # ------------------------------------------------------------------ RACK-TLP (RFC 8985)

    def _rack_on_ack(self, seg: TcpRepr, ack: int, old_una: int, now: float) -> None:
        """RFC 8985 section 6.2 steps 1-5 for one ACK: the segments it reports delivered, in
        ascending order (cumulatively acknowledged, then SACKed), update RACK; then look for
        losses, but only when something says there may be one (SACKed data above a hole, or a
        recovery going on): an ACK that only advances SND.UNA cannot reveal a loss."""
        rack = self._rack
        log = self._log
        ts = seg.timestamp
        tsecr = ts[1] if ts is not None and self._ts_enabled else None
        if ack > old_una:
            for sent in log.acked(ack):
                rack.update(sent, now, tsecr)
        if seg.sack_blocks:
            for left, right in seg.sack_blocks:
                start = unwrap(left, ack)
                for sent in log.sacked(start, start + ((right - left) & SEQ_MASK)):
                    rack.update(sent, now, tsecr)
        if self._sb or self._cc.in_recovery or self._rack_deadline is not None:
            self._rack_detect(now)

    def _rack_detect(self, now: float) -> None:
        """Mark what RACK finds lost, arm the reordering timer for what may yet arrive, and
        start a recovery (one cwnd reduction per episode, RFC 6582's `recover` rule) when the
        losses are new."""
        cc = self._cc
        srtt = self._rto.srtt
        reo_wnd = self._rack.reo_wnd(
            cc.in_recovery, self._sb.sacked_bytes, cc.mss, srtt if srtt is not None else 1.0
        )
        newly, deadline = self._rack.detect(self._log, now, reo_wnd)
        self._rack_deadline = deadline
        if not newly:
            return
        self._stats.rack_lost += newly
        una = self.snd_una
        if not cc.in_recovery and una > cc.recover:
            cc.enter_sack_recovery(self.snd_max - una, self.snd_max)
            self._high_rxt = una
            self._stats.fast_recoveries += 1
            self._rack_fast_rtx = True
            self._tlp_end = None  # the recovery's reduction answers whatever the probe found

    def _rack_pipe(self) -> int:
        """Octets in the network (RFC 6675 SetPipe with RACK's losses, as Linux counts it):
        sent and not yet SACKed, minus what is marked lost and not resent. After a timeout
        only what was sent again since (below SND.NXT) counts."""
        una = self.snd_una
        upper = self.snd_nxt if self.snd_nxt < self.snd_max else self.snd_max
        pipe = upper - una - self._sb.sacked_between(una, upper) - self._log.lost_bytes(upper)
        return pipe if pipe > 0 else 0

    def _rack_retransmit(self, out: list[TcpRepr], mss: int, now: float) -> int | None:
        """Resend what RACK marked lost, lowest first, while cwnd - pipe >= 1 SMSS (RFC 6675
        section 5 step (C), NextSeg() rule 1 being "marked lost"); the first of a recovery goes
        whatever pipe says (step (4.3), the fast retransmit). A lost retransmission is
        marked again and resent again: RFC 6675 alone would wait for the timer. Returns pipe
        in a SACK recovery (for the new data that may follow), None outside one."""
        cc = self._cc
        log = self._log
        recovering = cc.in_recovery and cc.sack_mode
        seg = log.first_lost()
        if seg is None:
            return self._rack_pipe() if recovering else None
        pipe = self._rack_pipe()
        data_end = self._tx_seq + len(self._tx)
        fin_seq = self._fin_seq
        force = self._rack_fast_rtx
        self._rack_fast_rtx = False
        while seg is not None and (force or cc.cwnd - pipe >= mss):
            force = False
            seq = seg.start
            n = min(mss, seg.end - seq, max(data_end - seq, 0))
            fin = fin_seq is not None and seq + n == fin_seq and fin_seq < self.snd_max
            if n <= 0 and not fin:
                seg.lost = False  # nothing left to send there (cannot happen; never loop)
            else:
                self._stats.retransmits_fast += 1
                self._emit(out, seq, n, fin, now)
                pipe += n
            seg = log.first_lost()
        return pipe if recovering else None

    def _arm_probe(self, now: float) -> None:
        """RFC 8985 section 7.2: after new data went out or an ACK came, schedule a tail loss
        probe, unless a recovery or a timeout is handling losses or a probe is in flight."""
        if self.snd_max <= self.snd_una:
            self._tlp_deadline = None
            return
        if not self._tlp_rearm:
            return
        self._tlp_rearm = False
        if (
            not self.config.tlp
            or self._cc.in_recovery
            or self._tlp_end is not None
            or self._retries
            or self._rtx_deadline is None
        ):
            self._tlp_deadline = None
            return
        flight = self.snd_max - self.snd_una
        pto = probe_timeout(self._rto.srtt, -(-flight // self._mss), self._rtx_deadline - now)
        self._tlp_deadline = now + pto

    def _on_probe_timeout(self, now: float, out: list[TcpRepr]) -> None:
        """RFC 8985 section 7.3: no ACK for two round trips: send one new segment if the
        windows allow, else resend the last one, so that an ACK (with SACK blocks) comes
        back and RACK can find a tail loss without waiting for the retransmission timer."""
        self._tlp_deadline = None
        una = self.snd_una
        snd_max = self.snd_max
        if (
            self.state not in TRANSMITTING
            or snd_max <= una
            or self._cc.in_recovery
            or self._tlp_end is not None
        ):
            return
        mss = self._mss
        data_end = self._tx_seq + len(self._tx)
        fin_seq = self._fin_seq
        room = una + self.snd_wnd - snd_max
        if self.snd_nxt == snd_max and data_end > snd_max and room > 0:
            n = min(mss, data_end - snd_max, room)
            self._emit(out, snd_max, n, fin_seq is not None and snd_max + n == fin_seq, now)
            self._tlp_retrans = False
        else:
            fin = fin_seq is not None and fin_seq < snd_max
            data_hi = min(snd_max, data_end)
            seq = max(data_hi - mss, una)
            n = max(data_hi - seq, 0)
            if n == 0 and not fin:
                return
            self._stats.retransmits_fast += 1
            self._emit(out, seq, n, fin, now)
            self._tlp_retrans = True
        self._stats.tlp_probes += 1
        self._tlp_end = self.snd_max
        self._rtx_deadline = now + self._rto.rto

    def _probe_answered(self, seg: TcpRepr, ack: int, news: bool) -> None:
        """RFC 8985 section 7.4, as Linux decides it: an ACK reached the probe's end. A probe
        of new data, a D-SACK for the resent probe, or a pure duplicate ACK (original and
        probe both arrived) end the episode: nothing was lost. An ACK beyond the probe with
        neither means the probe repaired a loss: the window is reduced as a fast recovery
        would. An ACK exactly up to the probe cannot tell yet (`news`: it advanced SND.UNA,
        SACKed more or carried data) and leaves the episode open."""
        if not self._tlp_retrans or _has_dsack(seg, ack):
            pass
        elif ack > self._tlp_end:
            self._cc.on_loss_repaired()
            self._stats.tlp_repairs += 1
        elif news:
            return
        self._tlp_end = None
        self._tlp_retrans = False

    def _sample_rtt(self, seg: TcpRepr, ack: int, now: float) -> None:
        """Take an RTT sample if one is valid (RFC 6298 section 3, RFC 7323 section 4).

        With timestamps every ACK of new data yields a sample from TSecr, and retransmissions
        are disambiguated because the echoed TSval is that of the copy that arrived. Without
        them one segment at a time is timed and any retransmission cancels the measurement
        (Karn's algorithm).
        """
        if self._ts_enabled:
            ts = seg.timestamp
            episode_end = self._rtx_episode_end
            if episode_end is not None and ack >= episode_end:
                self._rtx_episode_end = None
            if ts is None or not ts[1]:
                return
            if episode_end is not None and seq_lt(ts[1], self._rtx_episode_ts):
                # The echo predates our latest retransmission of this data: the ACK may have
                # been provoked by that retransmission arriving as a duplicate (the earlier
                # ACK was lost), so the sample would include a whole timeout. Skip it, as
                # Karn's algorithm would.
                return
            ticks = (self._ts_now(now) - ts[1]) & SEQ_MASK
            if ticks < 0x7FFFFFFF and ticks <= self.config.max_rto * _TS_HZ:
                self._rto.on_sample(ticks / _TS_HZ)
                self._stats.rtt_samples += 1
            return
        if self._rtt_seq is not None and ack >= self._rtt_seq:
            self._rto.on_sample(now - self._rtt_time)
            self._stats.rtt_samples += 1
            self._rtt_seq = None

    def _process_text(
        self, seq: int, payload: bytes | memoryview, fin: bool, psh: bool, now: float
    ) -> None:
        """Seventh and eighth checks: deliver in-window data, then the FIN (3.10.7.4)."""
        plen = len(payload)
        fin_seq = seq + plen if fin else None
        if plen and not self._take_text(seq, payload, psh, now):
            fin_seq = None  # the FIN followed text beyond the window, and is dropped with it
        if fin_seq is not None and self._rcv_fin_seq is None and fin_seq <= self.rcv_adv:
            self._rcv_fin_seq = fin_seq
            if fin_seq > self.rcv_nxt:
                self._ack_now = True  # FIN beyond a gap
        if (
            self._rcv_fin_seq is not None
            and not self._fin_received
            and self.rcv_nxt == self._rcv_fin_seq
        ):
            self._consume_fin(now)

    def _take_text(self, seq: int, payload: bytes | memoryview, psh: bool, now: float) -> bool:
        """Seventh check: keep the part of the text inside the receive window (RFC 9293 section
        3.10.7.4); False when text beyond the right edge had to be dropped.

        Text wholly below RCV.NXT is a duplicate and is acknowledged at once; nothing may
        follow the peer's FIN. Out-of-order text is stored and acknowledged at once (RFC 5681
        section 4.2), in-order text is delivered.
        """
        rcv_nxt = self.rcv_nxt
        plen = len(payload)
        end = seq + plen
        if end <= rcv_nxt:
            self._stats.duplicate_segments_in += 1
            self._ack_now = True
            return True
        right = self.rcv_adv
        if self._rcv_fin_seq is not None and self._rcv_fin_seq < right:
            right = self._rcv_fin_seq  # nothing can follow the FIN
        whole = True
        start = seq
        if start < rcv_nxt:
            payload = memoryview(payload)[rcv_nxt - start :]
            start = rcv_nxt
        if end > right:
            payload = memoryview(payload)[: max(right - start, 0)]
            end = max(right, start)
            whole = False
            self._ack_now = True
        if end > start:
            if plen > self._rcv_mss:
                self._rcv_mss = min(plen, self.config.mss)
            if start > rcv_nxt:
                self._stats.out_of_order_in += 1
                self._ack_now = True
                self._rx.write(start - self._rcv_base, payload)
            else:
                had_gap = self._rx.has_ooo
                delivered = self._rx.write(start - self._rcv_base, payload)
                if delivered:
                    self._on_delivered(delivered, had_gap, psh, now)
        return whole

    def _on_delivered(self, delivered: int, filled_gap: bool, psh: bool, now: float) -> None:
        """`delivered` more octets are in order for the application: RCV.NXT advances, the
        event says so, and the ACK goes at once or is delayed (RFC 9293 section 3.8.6.3, RFC
        5681 section 4.2): at once when it filled a gap (the sender is recovering) or has PSH
        with `quickack_on_psh`, and for every second full-sized segment; otherwise within the
        delayed-ACK timeout. The one place both the full path and header prediction take."""
        self.rcv_nxt += delivered
        self._stats.bytes_in += delivered
        self._events.append(TcpDataReceived(delivered))
        cfg = self.config
        if filled_gap or not cfg.delayed_ack or (psh and cfg.quickack_on_psh):
            self._ack_now = True
        else:
            self._rcv_unacked += delivered
            if self._rcv_unacked >= 2 * self._rcv_mss:
                self._ack_now = True
            elif self._delack_deadline is None:
                self._delack_deadline = now + cfg.delayed_ack_timeout

    def _consume_fin(self, now: float) -> None:
        """The peer's FIN is next in sequence (RFC 9293 3.10.7.4 eighth check)."""
        self.rcv_nxt += 1
        self._fin_received = True
        self._ack_now = True
        self._events.append(TcpPeerClosed())
        st = self.state
        if st is _ESTABLISHED or st is TcpState.SYN_RECEIVED:
            self.state = TcpState.CLOSE_WAIT
        elif st is TcpState.FIN_WAIT_1:
            # Our FIN is not yet acknowledged (else we would be in FIN-WAIT-2): simultaneous
            # close.
            self.state = TcpState.CLOSING
        elif st is TcpState.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _after_read(self) -> None:
        """Send a window update when reading opened the window substantially.

        RFC 9293 section 3.8.6.2.2 (receiver SWS avoidance) keeps small increases back; like
        Linux, an update goes out once the window would at least double.
        """
        if self.state not in CAN_RECEIVE or self.state is TcpState.SYN_RECEIVED:
            return
        current = self.rcv_adv - self.rcv_nxt
        potential = self._rx.capacity - self._rx.ready_len
        if potential - current >= self._rcv_sws and potential >= 2 * current:
            self._ack_now = True

    def _oow_ack(self, now: float, carries_data: int) -> None:
        """Answer an unacceptable segment with an ACK.

        Answers to segments without data or FIN (pure ACKs, SYNs, probes) are rate-limited
        like Linux's tcp_invalid_ratelimit, so that two confused ends cannot ACK each other
        in a tight loop.
        """
        if carries_data or now - self._last_oow_ack >= self.config.invalid_ack_interval:
            self._last_oow_ack = now
            self._ack_now = True

    def _reset_by_peer(self) -> None:
        st = self.state
        if st in (TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT):
            self._enter_closed(TcpClosed())
        else:
            self._rx.clear()
            self._enter_closed(TcpReset())

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 sections 3.2/4.2 challenge ACK, rate-limited per section 7."""
        if now - self._challenge_epoch >= 1.0:
            self._challenge_epoch = now
            self._challenge_count = 0
        if self._challenge_count < self.config.challenge_ack_limit:
            self._challenge_count += 1
            self._stats.challenge_acks += 1
            self._ack_now = True

    # ------------------------------------------------------------------ state changes

    def _established(self) -> None:
        """Enter ESTABLISHED (or FIN-WAIT-1 if the application closed during the handshake)."""
        self.state = TcpState.FIN_WAIT_1 if self._fin_seq is not None else _ESTABLISHED
        self._cc = CONGESTION_CONTROLS[self.config.cc](
            self._mss, self.config.initial_window, self.iss
        )
        if self._syn_retransmitted and self._rto.samples == 0:
            # RFC 6298 section 5.7.
            self._rto.set_base(max(self.config.rto_after_syn_loss, self._rto.base_rto))
        self._retries = 0
        self._syn_pending = False
        self._events.append(TcpConnected())

    def _enter_time_wait(self, now: float) -> None:
        """TIME-WAIT lasts 2*MSL (RFC 9293 section 3.4.2); only ACKs of FINs go out."""
        self.state = TcpState.TIME_WAIT
        self._rtx_deadline = None
        self._persist_deadline = None
        self._rtx_head = False
        self._timewait_deadline = now + 2 * self.config.msl

    def _enter_closed(self, event: TcpEvent) -> None:
        """Delete the TCB's activity and report the one terminal event."""
        if self.state is _CLOSED:
            return  # exactly one terminal event per connection
        self.state = _CLOSED
        self._rtx_deadline = None
        self._persist_deadline = None
        self._delack_deadline = None
        self._timewait_deadline = None
        self._syn_pending = False
        self._ack_now = False
        self._rtx_head = False
        self._force_send = False
        self._tx.clear()
        self._sb.clear()
        self._events.append(event)

    # ------------------------------------------------------------------ timers

    def _on_rto(self, now: float) -> None:
        """Retransmission timer expiry (RFC 6298 section 5.4-5.6, RFC 5681 section 3.1)."""
        self._rtx_deadline = None
        cfg = self.config
        st = self.state
        if st is TcpState.SYN_SENT or st is TcpState.SYN_RECEIVED:
            limit = cfg.syn_retries if st is TcpState.SYN_SENT else cfg.synack_retries
            if self._retries >= limit:
                self._enter_closed(TcpConnectionFailed("connection timed out (SYN)"))
                return
            self._retries += 1
            self._rto.on_timeout()
            self._syn_pending = True
            self._syn_retransmitted = True
            self._rtt_seq = None
            self._stats.timeouts += 1
            self._stats.retransmits_timeout += 1
            return
        if st not in TRANSMITTING or self.snd_max <= self.snd_una:
            return
        if self._retries >= cfg.data_retries:
            self._enter_closed(TcpConnectionFailed("connection timed out (retransmissions)"))
            return
        self._stats.timeouts += 1
        self._cc.on_timeout(self.snd_max - self.snd_una, self.snd_max, self._retries == 0)
        self._retries += 1
        self._rto.on_timeout()
        self._rtt_seq = None
        # Everything beyond the head is presumed lost: resend from SND.UNA in slow start.
        self.snd_nxt = self.snd_una
        self._rtx_head = True
        self._rtx_head_timeout = True
        # The go-back-N resend covers whatever RACK marked; no probe until data is acked.
        self._log.forget_losses()
        self._tlp_end = None
        self._tlp_deadline = None
        self._prr = None

    def _on_persist(self, now: float, out: list[TcpRepr]) -> None:
        """Persist timer (RFC 9293 section 3.8.6.1): probe a zero window, or send what a small
        window allows once the SWS override time has passed (section 3.8.6.2.1)."""
        self._persist_deadline = None
        if self.state not in TRANSMITTING or self.snd_max > self.snd_una:
            return
        if self._persist_unanswered >= self.config.data_retries:
            self._enter_closed(TcpConnectionFailed("connection timed out (window probes)"))
            return
        self._persist_backoff += 1
        if self.snd_wnd == 0:
            # Like Linux, probe with an old sequence number and no data: the receiver must
            # answer the unacceptable segment with an ACK carrying its current window.
            out.append(self._segment(self.snd_una - 1, _ACK, b"", now))
            self._stats.window_probes += 1
            self._persist_unanswered += 1
        else:
            self._force_send = True

    def _persist_interval(self) -> float:
        return min(self._rto.rto * (1 << min(self._persist_backoff, 20)), self.config.max_rto)

    def _keepalive_deadline(self) -> float | None:
        cfg = self.config
        if cfg.keepalive_idle is None or self.state not in (_ESTABLISHED, TcpState.CLOSE_WAIT):
            return None
        if self._ka_probes == 0:
            return self._last_rx_time + cfg.keepalive_idle
        return self._ka_last_probe + cfg.keepalive_interval

    def _check_keepalive(self, now: float, out: list[TcpRepr]) -> None:
        """RFC 9293 section 3.8.4 keep-alive: probe an idle connection, give up eventually."""
        deadline = self._keepalive_deadline()
        if deadline is None or now < deadline:
            return
        if self.snd_max > self.snd_una:
            # Retransmissions are already probing; look again one interval later.
            self._last_rx_time = now
            return
        if self._ka_probes >= self.config.keepalive_probes:
            # Like Linux, tell a peer that may merely have lost our probes' answers.
            self._ctl.append(self._bare(self._ack_seq(), 0, _RST))
            self._enter_closed(TcpConnectionFailed("connection timed out (keep-alive)"))
            return
        self._ka_probes += 1
        self._ka_last_probe = now
        self._stats.keepalive_probes += 1
        out.append(self._segment(self.snd_max - 1, _ACK, b"", now))

    # ------------------------------------------------------------------ output

    def _output(self, now: float, out: list[TcpRepr]) -> None:
        """Emit retransmissions, new data and FIN as windows, Nagle and SWS rules allow.

        Repairs go first (the head of the queue, then the SACK holes), so that new data never
        takes the congestion window a loss recovery needs.
        """
        mss = self._burst_mss()
        if self._rtx_head:
            self._retransmit_head(out, mss, now)
        cc = self._cc
        if self._rack_on:
            pipe = self._rack_retransmit(out, mss, now)
        else:
            pipe = self._sack_retransmit(out, mss, now) if cc.in_recovery and cc.sack_mode else None
        if self.config.slow_start_after_idle:
            self._restart_after_idle(now)
        self._send_from_snd_nxt(out, mss, pipe, now)
        self._update_persist_timer(now)

    def _idle(self, now: float) -> bool:
        """The fast path's side of `poll`: when nothing waits to be sent or resent (no queued
        data beyond SND.NXT, no FIN still to send, no repair asked for, no recovery, nothing
        RACK marked lost), apply what `_output` would do then (the idle restart, no persist timer,
        a persist-forced send cancelled) and return True; else False, nothing changed."""
        fin_seq = self._fin_seq
        if (
            self._rtx_head
            or (fin_seq is not None and self.snd_nxt <= fin_seq)
            or self.snd_nxt < self._tx_seq + len(self._tx)
            or self._cc.in_recovery
            or self._log.maybe_lost
        ):
            return False
        self._force_send = False
        if self.config.slow_start_after_idle:
            self._restart_after_idle(now)
        self._persist_deadline = None
        return True

    def _burst_mss(self) -> int:
        """Payload of a full segment in this burst.

        While out-of-order data makes every segment carry SACK blocks, the option's room comes
        out of the MSS (RFC 9293 section 3.7.1: options count against the segment size).
        """
        mss = self._mss
        if self._sack_enabled and self._rx.has_ooo:
            nblocks = len(self._rx.sack_blocks(self._max_sack))
            mss = max(mss - sack_option_space(nblocks), 1)
        return mss

    def _retransmit_head(self, out: list[TcpRepr], mss: int, now: float) -> None:
        """Resend the segment at SND.UNA, as fast retransmit (RFC 5681 section 3.2), a NewReno
        partial ACK (RFC 6582) or a timeout (RFC 6298 section 5.4) asked; it stops at the
        first SACKed byte (RFC 6675)."""
        self._rtx_head = False
        seq = self.snd_una
        if seq >= self.snd_max:
            return
        fin_seq = self._fin_seq
        data_end = self._tx_seq + len(self._tx)
        # Within the peer's window, but at least one octet so that a closed window is probed
        # too (RFC 9293 section 3.8.6.1).
        n = min(mss, max(data_end - seq, 0), max(self.snd_wnd, 1))
        if self._sb:
            n = self._clip_to_hole(seq, n)
        fin = fin_seq is not None and seq + n == fin_seq and fin_seq < self.snd_max
        if n > 0 or fin:
            if self._rtx_head_timeout:
                self._stats.retransmits_timeout += 1
            else:
                self._stats.retransmits_fast += 1
            self._emit(out, seq, n, fin, now)
            if seq + n > self._high_rxt:
                self._high_rxt = seq + n

    def _clip_to_hole(self, seq: int, n: int) -> int:
        """Shorten a resend at `seq` to end where the peer's SACKed data begins: those bytes
        arrived already (RFC 2018 section 1, RFC 6675 section 5)."""
        hole_end = self._sb.next_sacked_start(seq)
        if hole_end is not None and hole_end - seq < n:
            return hole_end - seq
        return n

    def _restart_after_idle(self, now: float) -> None:
        """RFC 5681 section 4.1: after an idle period longer than one RTO the ACK clock is
        gone, so restart from the initial window instead of bursting a stale cwnd."""
        if (
            self.snd_max == self.snd_una
            and self._last_send_time is not None
            and now - self._last_send_time > self._rto.rto
        ):
            self._cc.on_idle_restart()

    def _send_from_snd_nxt(
        self, out: list[TcpRepr], mss: int, pipe: int | None, now: float
    ) -> None:
        """Send segments from SND.NXT on: new data, the go-back-N resend after a timeout, and
        the FIN once every queued byte went out (RFC 9293 section 3.10.4).

        `pipe` is RFC 6675's estimate of the bytes in flight during a SACK recovery, None
        outside one.
        """
        tx = self._tx
        sb = self._sb
        fin_seq = self._fin_seq
        force = self._force_send
        self._force_send = False
        # New data may leave in TSO super-segments of whole MSS multiples, unless SACK blocks
        # shrink the MSS of this burst (the device would replicate a header of changing size).
        burst = mss
        tso_size = self.config.tso_size
        if tso_size > mss and mss == self._mss:
            burst = tso_size - tso_size % mss
        while True:
            seq = self.snd_nxt
            snd_max = self.snd_max
            if seq < snd_max and sb:
                skip = sb.sacked_end_at(seq)
                if skip is not None:
                    # Go-back-N after a timeout: the peer holds this range already.
                    self.snd_nxt = seq = skip
                    continue
            data_end = self._tx_seq + len(tx)
            if seq >= data_end:
                if fin_seq is not None and seq == fin_seq:
                    if seq < snd_max:
                        self._stats.retransmits_timeout += 1
                    self._emit(out, seq, 0, True, now)
                return
            avail = data_end - seq
            n = self._segment_size(seq, self._usable_window(seq, pipe, force), avail, mss, burst)
            if n <= 0:
                return
            if n < mss and seq >= snd_max and not force and self._defer_small(seq, n, avail):
                return
            fin = fin_seq is not None and seq + n == fin_seq
            if seq < snd_max:
                self._stats.retransmits_timeout += 1
            self._emit(out, seq, n, fin, now)
            if pipe is not None:
                pipe += n
            force = False

    def _usable_window(self, seq: int, pipe: int | None, force: bool) -> int:
        """Octets from `seq` that the peer's window and the congestion window allow now.

        The lower of the two right edges: SND.UNA + SND.WND (RFC 9293 section 3.8.6) and
        SND.UNA + cwnd (RFC 5681), cwnd widened by RFC 3042 limited transmit on the first two
        duplicate ACKs; in a SACK recovery, cwnd - pipe instead (RFC 6675 section 5). When the
        persist timer `force`s a send, only the peer's window counts (RFC 9293 3.8.6.2.1).
        """
        cc = self._cc
        una = self.snd_una
        wnd_edge = una + self.snd_wnd
        if pipe is not None:
            edge = seq + cc.cwnd - pipe
        else:
            cwnd = cc.cwnd
            dup_acks = cc.dup_acks
            if self.config.limited_transmit and 0 < dup_acks < 3 and seq >= self.snd_max:
                cwnd += dup_acks * cc.mss  # RFC 3042
            edge = una + cwnd
        if wnd_edge < edge:
            edge = wnd_edge
        n = edge - seq
        if force and n <= 0 and self.snd_wnd > 0:
            n = wnd_edge - seq
        return n

    def _segment_size(self, seq: int, allowed: int, avail: int, mss: int, burst: int) -> int:
        """Payload of the segment at `seq`, of which the windows allow `allowed` octets and
        `avail` are queued.

        New data leaves in whole MSS multiples up to the TSO `burst` (a short tail mid-stream
        would be a silly-window segment, RFC 9293 section 3.8.6.2.1); a resend is one MSS at
        most and stops where SACKed data begins (RFC 6675).
        """
        snd_max = self.snd_max
        n = allowed
        cap = burst if seq >= snd_max else mss
        if n > cap:
            n = cap
        if n > avail:
            n = avail
        elif n > mss:
            n -= n % mss
        if seq < snd_max and self._sb:
            n = self._clip_to_hole(seq, n)
        return n

    def _defer_small(self, seq: int, n: int, avail: int) -> bool:
        """Hold back a new segment of `n` < MSS octets at `seq`; `avail` octets are queued.

        Sender SWS avoidance (RFC 9293 section 3.8.6.2.1) when more data waits: a partial
        segment goes only if it fills the window and is at least half the largest window
        the peer offered. Nagle (RFC 9293 section 3.7.4) when it is the tail: it waits while
        earlier data is unacknowledged, unless the FIN follows it.
        """
        if n < avail:
            return seq + n < self.snd_una + self.snd_wnd or n < (self.max_snd_wnd + 1) // 2
        return not self.config.nodelay and self.snd_una < seq and self._fin_seq is None

    def _update_persist_timer(self, now: float) -> None:
        """RFC 9293 section 3.8.6.1: the persist timer runs only while nothing is in flight
        (no ACK will come to reopen the window) and queued data waits for a window."""
        if self.snd_max > self.snd_una:
            self._persist_deadline = None
        elif self.snd_nxt < self._tx_seq + len(self._tx):
            if self._persist_deadline is None:
                self._persist_deadline = now + self._persist_interval()
        else:
            self._persist_deadline = None

    def _pipe(self, lost_edge: int) -> int:
        """RFC 6675 SetPipe(): bytes believed to be in the network.

        Everything between SND.UNA and SND.MAX counts, except SACKed bytes and bytes deemed
        lost (below `lost_edge`) that have not been retransmitted yet (above HighRxt).
        """
        sb = self._sb
        una = self.snd_una
        pipe = self.snd_max - una - sb.sacked_bytes
        start = self._high_rxt if self._high_rxt > una else una
        if lost_edge > start:
            pipe -= (lost_edge - start) - sb.sacked_between(start, lost_edge)
        return pipe if pipe > 0 else 0

    def _sack_retransmit(self, out: list[TcpRepr], mss: int, now: float) -> int:
        """RFC 6675 section 5 step (C): resend lost holes while cwnd - pipe >= 1 SMSS.

        NextSeg() rule 1 only: the lowest un-SACKed byte above HighRxt that IsLost(). Returns
        the updated pipe so that new data (rule 2) can be paced by the caller.
        """
        sb = self._sb
        cc = self._cc
        una = self.snd_una
        lost_edge = sb.lost_boundary(cc.mss) if sb else None
        if lost_edge is None:
            lost_edge = una
        pipe = self._pipe(lost_edge)
        data_end = self._tx_seq + len(self._tx)
        fin_seq = self._fin_seq
        while cc.cwnd - pipe >= mss:
            seq = self._high_rxt if self._high_rxt > una else una
            skip = sb.sacked_end_at(seq)
            if skip is not None:
                seq = skip
            if seq >= lost_edge:
                break
            hole_end = sb.next_sacked_start(seq)
            if hole_end is None or hole_end > lost_edge:
                hole_end = lost_edge
            n = min(mss, hole_end - seq, max(data_end - seq, 0))
            fin = fin_seq is not None and seq + n == fin_seq and fin_seq < self.snd_max
            if n <= 0 and not fin:
                break
            self._stats.retransmits_fast += 1
            self._emit(out, seq, n, fin, now)
            self._high_rxt = seq + n + (1 if fin else 0)
            pipe += n
        return pipe

    def _emit(self, out: list[TcpRepr], seq: int, n: int, fin: bool, now: float) -> None:
        """Build one data/FIN segment at `seq` and update the send-side bookkeeping."""
        tx_seq = self._tx_seq
        data_end = tx_seq + len(self._tx)
        flags = _ACK
        payload: bytes = b""
        if n:
            payload = self._tx.peek(seq - tx_seq, n)
            if seq + n == data_end:
                flags |= _PSH
        if fin:
            flags |= _FIN
        out.append(self._segment(seq, flags, payload, now))
        end = seq + n + (1 if fin else 0)
        if self._rack_on:
            self._log.on_send(seq, end, self.snd_max, now, self._ts_now(now))
            if end > self.snd_max:
                self._tlp_rearm = True
        stats = self._stats
        stats.bytes_out += n
        if self._prr is not None:
            self._prr.on_sent(n)
        if seq < self.snd_max:
            stats.bytes_retransmitted += n
            self._rtt_seq = None  # Karn: no sample while a retransmission is outstanding
            self._rtx_episode_ts = self._ts_now(now)
            self._rtx_episode_end = self.snd_max
        elif self._rtt_seq is None and not self._ts_enabled:
            self._rtt_seq = end
            self._rtt_time = now
        if end > self.snd_nxt:
            self.snd_nxt = end
        if end > self.snd_max:
            self.snd_max = end
        if self._rtx_deadline is None:
            self._rtx_deadline = now + self._rto.rto
        self._last_send_time = now

    def _syn_segment(self, now: float) -> TcpRepr:
        """SYN (active open) or SYN-ACK (passive or simultaneous open), options included."""
        cfg = self.config
        with_ack = self.state is TcpState.SYN_RECEIVED
        window = min(self._rx.capacity, 0xFFFF)
        if with_ack:
            ws = self._rcv_wscale if self._ws_enabled else None
            sack_ok = self._sack_enabled
            ts = (self._ts_now(now), self._ts_recent) if self._ts_enabled else None
            flags = _SYN | _ACK
            ack = self.rcv_nxt & SEQ_MASK
            self._last_ack_sent = self.rcv_nxt
            self._ack_now = False
        else:
            ws = window_shift_for(cfg.recv_buffer_size) if cfg.window_scaling else None
            sack_ok = cfg.sack
            ts = (self._ts_now(now), 0) if cfg.timestamps else None
            flags = _SYN
            ack = 0
        if self.snd_max < self.iss + 1:
            self.snd_nxt = self.snd_max = self.iss + 1
            if not cfg.timestamps:
                self._rtt_seq = self.iss + 1
                self._rtt_time = now
        else:
            # A resent SYN opens a retransmission episode like resent data: the answer may
            # echo the TSval of the first copy (Linux's SYN-ACK does after a lost SYN-ACK),
            # and a sample taken from it would include the whole SYN timeout.
            self._rtx_episode_ts = self._ts_now(now)
            self._rtx_episode_end = self.iss + 1
        if self._rtx_deadline is None:
            self._rtx_deadline = now + self._rto.rto
        self._last_send_time = now
        return TcpRepr(
            src_port=self.local[1],
            dst_port=self.remote[1],
            seq=self.iss,
            ack=ack,
            flags=_FLAGS[flags],
            window=window,
            mss=cfg.mss,
            window_scale=ws,
            sack_permitted=sack_ok,
            timestamp=ts,
        )

    def _segment(self, seq: int, flags: int, payload: bytes, now: float) -> TcpRepr:
        """A segment carrying an ACK of RCV.NXT, the current window and the usual options."""
        rcv_nxt = self.rcv_nxt
        if self._sack_enabled and self._rx.has_ooo:
            base = self._rcv_base
            sack = tuple(
                ((base + s) & SEQ_MASK, (base + e) & SEQ_MASK)
                for s, e in self._rx.sack_blocks(self._max_sack)
            )
        else:
            sack = ()
        seg = TcpRepr(
            src_port=self.local[1],
            dst_port=self.remote[1],
            seq=seq & SEQ_MASK,
            ack=rcv_nxt & SEQ_MASK,
            flags=_FLAGS[flags],
            window=self._window_field(),
            sack_blocks=sack,
            timestamp=(self._ts_now(now), self._ts_recent) if self._ts_enabled else None,
            payload=payload,
        )
        self._last_ack_sent = rcv_nxt
        self._ack_now = False
        self._delack_deadline = None
        self._rcv_unacked = 0
        return seg

    def _bare(self, seq: int, ack: int, flags: int) -> TcpRepr:
        """A segment without options (RST on abort)."""
        return TcpRepr(
            src_port=self.local[1],
            dst_port=self.remote[1],
            seq=seq & SEQ_MASK,
            ack=ack & SEQ_MASK,
            flags=_FLAGS[flags],
            window=0,
        )

    def _window_field(self) -> int:
        """The 16-bit window to advertise, moving RCV.ADV right but never left.

        Receiver SWS avoidance (RFC 9293 section 3.8.6.2.2): the right edge only advances by at
        least min(RCV.BUFF/2, MSS). The scaled value is rounded up so that scaling never makes
        the advertised right edge retreat (RFC 7323 section 2.4); the buffer absorbs the few
        extra bytes.
        """
        rcv_nxt = self.rcv_nxt
        free = self._rx.capacity - self._rx.ready_len
        adv = self.rcv_adv
        edge = rcv_nxt + (free if free > 0 else 0)
        if edge - adv >= self._rcv_sws:
            adv = edge
        shift = self._rcv_wscale
        wnd = adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        field = (wnd + (1 << shift) - 1) >> shift
        if field > 0xFFFF:
            field = 0xFFFF
        advertised = rcv_nxt + (field << shift)
        self.rcv_adv = adv if adv > advertised else advertised
        return field

    def _ack_seq(self) -> int:
        """Sequence number for segments that carry no data (pure ACKs, RST on abort).

        RFC 9293 says SND.NXT; after a timeout this implementation rewinds SND.NXT for the
        go-back-N resend, and an ACK carrying that old number would be unacceptable to a
        peer that already holds the data (two such peers ACK each other forever). So use the
        highest number sent, limited to the peer's window as Linux's `tcp_acceptable_seq` does.
        """
        edge = self.snd_una + self.snd_wnd
        return self.snd_max if self.snd_max <= edge else max(edge, self.snd_nxt)

    def _ts_now(self, now: float) -> int:
        """TSval for time `now` (RFC 7323 section 5.4: a 1 ms clock plus a random offset)."""
        return (int(now * _TS_HZ) + self._ts_offset) & SEQ_MASK


def _has_dsack(seg: TcpRepr, ack: int) -> bool:
    """RFC 2883 section 4: the first SACK block reports a duplicate when it lies below the
    cumulative ACK or inside the second block."""
    blocks = seg.sack_blocks
    if not blocks:
        return False
    left, right = blocks[0]
    if seq_lt(left, ack & SEQ_MASK):
        return True
    if len(blocks) > 1:
        left2, right2 = blocks[1]
        return not seq_lt(left, left2) and not seq_lt(right2, right)
    return False

"""Per-connection tunables.

One frozen dataclass so that a listener can hand the same settings to every child connection,
and so that benchmarks can state exactly what they ran with. Defaults follow Linux where the
RFCs leave room (min RTO 200 ms, delayed ACK 40 ms, IW10) because the testbed compares the
stack against Linux; each field names the rule it tunes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .controllers import CONGESTION_CONTROLS, DEFAULT_CC

#: Smallest send MSS accepted from a peer; Linux clamps to 48 (`tcp_min_snd_mss`) so that a
#: hostile tiny MSS cannot turn one write into thousands of segments.
MIN_MSS = 48


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Settings of one connection (or of every connection a listener creates)."""

    #: MSS we announce and the largest segment payload we send (RFC 9293 section 3.7.1: MMS_R
    #: and MMS_S minus the 20-byte TCP header); the stack derives it from the MTU.
    mss: int = 1460
    #: Send MSS assumed when the peer's SYN has no MSS option (RFC 9293 3.7.1: 536 for IPv4).
    default_peer_mss: int = 536
    #: Largest payload of one outgoing segment of new data. Above the MSS, such a segment is
    #: a TSO "super-segment" for a device that cuts it into MSS-sized ones (the stack sets
    #: this when segmentation offload is on): the per-segment work of the sender is then
    #: paid once per 64 KiB instead of once per 1448 bytes. Windows, Nagle and sender SWS
    #: avoidance still apply per MSS; retransmissions stay MSS-sized. 0: MSS-sized only.
    tso_size: int = 0
    send_buffer_size: int = 256 * 1024
    recv_buffer_size: int = 256 * 1024
    #: RFC 7323 section 2: offer window scaling; the shift is derived from `recv_buffer_size`.
    window_scaling: bool = True
    #: RFC 7323 sections 3-5: offer timestamps (RTTM and PAWS).
    timestamps: bool = True
    #: RFC 7323 section 5: reject segments whose TSval went backwards.
    paws: bool = True
    #: RFC 2018: offer SACK-permitted, send SACK blocks, use received blocks when retransmitting.
    sack: bool = True
    #: With SACK in use, recover from losses the RFC 6675 way (retransmit every hole the
    #: scoreboard shows as lost, paced by `pipe`) instead of NewReno's one hole per RTT.
    sack_recovery: bool = True
    #: RFC 8985 RACK: with SACK in use, a segment is lost once one sent after it was delivered
    #: and a reordering window passed (finds lost retransmissions and tail losses), instead
    #: of RFC 6675's count of SACKed bytes above it.
    rack: bool = True
    #: RFC 8985 tail loss probe: with RACK, probe after two round trips without an ACK
    #: rather than wait for the retransmission timer.
    tlp: bool = True
    #: Congestion controller, by name (`controllers.CONGESTION_CONTROLS`): NewReno or CUBIC.
    cc: str = DEFAULT_CC
    #: RFC 6937 Proportional Rate Reduction: during a recovery, send in proportion to what
    #: the peer reports delivered, so the window comes down to ssthresh smoothly instead of
    #: stopping to send for half a round trip and then bursting.
    prr: bool = True
    #: Header prediction (`fastpath.py`): the next in-order segment or a pure ACK of new data
    #: on a quiet ESTABLISHED connection skips the full path's checks, with the same outcome.
    #: Off: every segment takes the full path (the specification the fast path is tested
    #: against).
    fast_path: bool = True
    #: Disable Nagle's algorithm (RFC 9293 section 3.7.4); on by default because the benchmarks
    #: measure request/response latency.
    nodelay: bool = True
    #: RFC 9293 section 3.8.6.3 / RFC 5681 section 4.2 delayed acknowledgments.
    delayed_ack: bool = True
    delayed_ack_timeout: float = 0.040
    #: Acknowledge a segment carrying PSH at once instead of delaying the ACK.
    quickack_on_psh: bool = False
    #: Initial congestion window in segments (RFC 6928 IW10; RFC 5681 allows 2-4).
    initial_window: int = 10
    #: RFC 3042 limited transmit on the first two duplicate ACKs.
    limited_transmit: bool = True
    #: RFC 5681 section 4.1: restart from the initial window after an idle period of one RTO.
    slow_start_after_idle: bool = True
    #: RFC 6298 section 2.1 initial RTO; 2.4 lower bound (RFC: 1 s, Linux: 200 ms); upper bound
    #: (RFC 6298 section 2.5 requires at least 60 s).
    initial_rto: float = 1.0
    min_rto: float = 0.200
    max_rto: float = 60.0
    #: Clock granularity G of RFC 6298 section 2.
    clock_granularity: float = 0.001
    #: RFC 6298 section 5.7: RTO used once the handshake completes if the SYN was retransmitted
    #: and no RTT sample exists.
    rto_after_syn_loss: float = 3.0
    #: Retransmissions of a SYN before the connection fails (Linux tcp_syn_retries).
    syn_retries: int = 6
    #: Consecutive RTO expirations without progress before the connection fails (RFC 9293
    #: section 3.8.3 "R2"; Linux tcp_retries2).
    data_retries: int = 15
    #: Maximum segment lifetime; TIME-WAIT lasts 2 * msl (RFC 9293 section 3.4.2).
    msl: float = 30.0
    #: Ignore RSTs in TIME-WAIT (RFC 1337); off by default like Linux (tcp_rfc1337=0), which
    #: follows RFC 9293 section 3.10.7.4 and lets an RST end TIME-WAIT early.
    rfc1337: bool = False
    #: RFC 9293 section 3.8.4 keep-alive: idle time before the first probe (None: disabled).
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    #: RFC 4987 section 3.6: a listener whose backlog is full answers SYNs with SYN cookies
    #: instead of dropping them (Linux's tcp_syncookies=1).
    syncookies: bool = True
    #: Retransmissions of a SYN-ACK before a half-open connection is given up (Linux
    #: tcp_synack_retries): what a spoofed SYN costs a listener without cookies, 63 s with 5.
    synack_retries: int = 5
    #: RFC 5961 section 7: at most this many challenge ACKs per second on one connection.
    challenge_ack_limit: int = 10
    #: Minimum interval between ACKs answering unacceptable segments without data (Linux
    #: tcp_invalid_ratelimit), which breaks ACK loops between confused peers.
    invalid_ack_interval: float = 0.5

    def __post_init__(self) -> None:
        """Reject settings that would make the state machine misbehave rather than fail later."""
        if self.mss < MIN_MSS or self.mss > 65535:
            raise ValueError(f"mss must be in [{MIN_MSS}, 65535], got {self.mss}")
        if self.default_peer_mss < MIN_MSS:
            raise ValueError("default_peer_mss too small")
        if not 0 <= self.tso_size <= 65535 - 20 - 60:
            raise ValueError("tso_size must be in [0, 65455] (an IPv4 packet holds 65535 bytes)")
        if self.send_buffer_size < 1 or self.recv_buffer_size < 1:
            raise ValueError("buffer sizes must be positive")
        if self.recv_buffer_size > (65535 << 14):
            raise ValueError("recv_buffer_size exceeds what window scaling can advertise")
        if not 0 < self.min_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= max_rto")
        if not self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("initial_rto must lie within [min_rto, max_rto]")
        if self.cc not in CONGESTION_CONTROLS:
            known = ", ".join(CONGESTION_CONTROLS)
            raise ValueError(f"congestion control {self.cc!r} is not one of {known}")
        if self.initial_window < 1:
            raise ValueError("initial_window must be at least one segment")
        if self.msl < 0 or self.delayed_ack_timeout <= 0:
            raise ValueError("timers must be positive")
        if self.syn_retries < 0 or self.synack_retries < 0 or self.data_retries < 1:
            raise ValueError("retry limits must be positive")
        if self.keepalive_idle is not None and (
            self.keepalive_idle <= 0 or self.keepalive_interval <= 0 or self.keepalive_probes < 1
        ):
            raise ValueError("keep-alive timers must be positive")

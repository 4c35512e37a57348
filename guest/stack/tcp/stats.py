"""Per-connection counters and gauges, for tests and for the benchmark reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(slots=True)
class TcpStats:
    """Counters only grow; the gauges at the end are refreshed on `TcpConnection.stats`."""

    segments_in: int = 0
    segments_out: int = 0
    #: Payload bytes delivered in order to the receive buffer.
    bytes_in: int = 0
    #: Payload bytes transmitted, retransmissions included.
    bytes_out: int = 0
    #: Payload bytes acknowledged by the peer.
    bytes_acked: int = 0
    bytes_retransmitted: int = 0
    #: Segments resent after the retransmission timer expired (go-back-N resends included).
    retransmits_timeout: int = 0
    #: Segments resent by fast retransmit or on NewReno partial ACKs, and SYN-ACKs resent
    #: because the peer's SYN came again (not by our timer: those count as timeouts).
    retransmits_fast: int = 0
    #: Expirations of the retransmission timer (SYN and data).
    timeouts: int = 0
    fast_recoveries: int = 0
    #: Segments RACK marked lost (RFC 8985), lost retransmissions included.
    rack_lost: int = 0
    #: Tail loss probes sent (RFC 8985 section 7.3); a probe that resends counts as a fast
    #: retransmission too.
    tlp_probes: int = 0
    #: Probes that repaired a loss on their own (RFC 8985 section 7.4).
    tlp_repairs: int = 0
    dup_acks_in: int = 0
    out_of_order_in: int = 0
    #: Segments whose data was entirely old (already received).
    duplicate_segments_in: int = 0
    #: Segments failing the RFC 9293 3.10.7.4 acceptability test or PAWS.
    unacceptable_in: int = 0
    window_probes: int = 0
    keepalive_probes: int = 0
    challenge_acks: int = 0
    rtt_samples: int = 0
    # Gauges.
    srtt: float | None = None
    rttvar: float | None = None
    rto: float = 0.0
    cwnd: int = 0
    ssthresh: int = 0
    snd_wnd: int = 0

    def as_dict(self) -> dict[str, object]:
        """Plain dict, for JSON reports."""
        return asdict(self)


#: The fields of `TcpStats` that are counters (summable over connections), not gauges.
TCP_COUNTERS: tuple[str, ...] = tuple(
    f.name
    for f in fields(TcpStats)
    if f.name not in ("srtt", "rttvar", "rto", "cwnd", "ssthresh", "snd_wnd")
)

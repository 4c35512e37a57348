"""SYN option negotiation: MSS (RFC 9293 3.7.1), window scale and timestamps (RFC 7323), SACK
permitted (RFC 2018).

Both ends of a handshake compute the same intersection: an option is in use only if both SYNs
carried it (RFC 7323 sections 1.3 and 3.2, RFC 2018 section 2). The option *space* figures let
the sender shrink a segment's payload so that header plus options stay within the MSS budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from guest.stack.wire.tcp import TcpRepr

from .config import MIN_MSS, TcpConfig

#: RFC 7323 section 2.3: the shift is at most 14.
MAX_WINDOW_SHIFT = 14
#: Timestamps take 10 bytes, padded to 12 (RFC 7323 appendix A layout).
TIMESTAMP_OPTION_SPACE = 12


def sack_option_space(blocks: int) -> int:
    """Bytes a SACK option with `blocks` blocks occupies, padded with two NOPs."""
    return 0 if blocks <= 0 else 4 + 8 * blocks


def max_sack_blocks(timestamps: bool) -> int:
    """Blocks that fit in the 40-byte option space (RFC 2018 section 3: 3 with timestamps)."""
    return 3 if timestamps else 4


def window_shift_for(buffer_size: int) -> int:
    """Smallest shift that lets a 16-bit window field cover `buffer_size` (capped at 14)."""
    shift = 0
    while (buffer_size >> shift) > 0xFFFF and shift < MAX_WINDOW_SHIFT:
        shift += 1
    return shift


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a completed option exchange leaves in force."""

    #: min(peer's MSS, our MSS): the largest payload without options (RFC 9293 3.7.1).
    send_mss: int
    #: Shift applied to the window field of segments we receive (the peer's shift.cnt).
    snd_wscale: int
    #: Shift applied to the window we advertise.
    rcv_wscale: int
    window_scaling: bool
    sack: bool
    timestamps: bool

    @property
    def payload_mss(self) -> int:
        """Eff.snd.MSS: the send MSS minus the options every segment carries."""
        return self.send_mss - (TIMESTAMP_OPTION_SPACE if self.timestamps else 0)


def negotiate(config: TcpConfig, peer_syn: TcpRepr) -> Negotiated:
    """Combine our configuration with the options of the peer's SYN or SYN-ACK.

    The active side offered exactly what `config` enables, so the same intersection applies to
    both ends; a SYN-ACK that carries an option we never offered is treated as not carrying it.
    """
    peer_mss = peer_syn.mss if peer_syn.mss is not None else config.default_peer_mss
    send_mss = max(min(peer_mss, config.mss), MIN_MSS)
    ws = config.window_scaling and peer_syn.window_scale is not None
    snd_ws = min(peer_syn.window_scale or 0, MAX_WINDOW_SHIFT) if ws else 0
    rcv_ws = window_shift_for(config.recv_buffer_size) if ws else 0
    return Negotiated(
        send_mss=send_mss,
        snd_wscale=snd_ws,
        rcv_wscale=rcv_ws,
        window_scaling=ws,
        sack=config.sack and peer_syn.sack_permitted,
        timestamps=config.timestamps and peer_syn.timestamp is not None,
    )

"""Proportional Rate Reduction (RFC 6937): how much a recovery may send per ACK.

RFC 6675 alone sets cwnd to ssthresh when a recovery starts and sends while cwnd > pipe: with
half the window gone the sender then stays silent for half a round trip and afterwards sends
in bursts, and a recovery that loses more than half its window (as a link losing 5 % of its
frames in bursts does) sends almost nothing until the timer fires. PRR spreads the reduction
over the recovery's round trip: for every byte the receiver reports delivered it sends
ssthresh / RecoverFS bytes while pipe is above ssthresh, and once pipe has fallen below,
grows back towards ssthresh no faster than slow start would (PRR-SSRB).

The connection owns one `Prr` per recovery, feeds it each ACK's DeliveredData and pipe, and
takes the returned window as cwnd for that ACK's transmissions.
"""

from __future__ import annotations


class Prr:
    """RFC 6937 section 3 state of one recovery."""

    __slots__ = ("delivered", "recover_fs", "sent", "ssthresh")

    def __init__(self, recover_fs: int, ssthresh: int) -> None:
        #: RecoverFS: the flight when the recovery began.
        self.recover_fs = max(recover_fs, 1)
        self.ssthresh = ssthresh
        self.delivered = 0  # prr_delivered
        self.sent = 0  # prr_out

    def on_ack(self, delivered_data: int, pipe: int, mss: int) -> int:
        """The window for this ACK's transmissions: pipe + sndcnt."""
        self.delivered += delivered_data
        if pipe > self.ssthresh:
            # Proportional rate reduction: CEIL(prr_delivered * ssthresh / RecoverFS) - prr_out,
            # the ceiling taken in whole segments as the RFC counts them (in octets it would
            # round up to one octet, and a sender waiting for a full segment would stall).
            share = -(-self.delivered * self.ssthresh // self.recover_fs)
            sndcnt = -(-share // mss) * mss - self.sent
        else:
            # Slow start reduction bound: at most what was delivered, plus one MSS.
            limit = max(self.delivered - self.sent, delivered_data) + mss
            sndcnt = min(self.ssthresh - pipe, limit)
        return pipe + max(sndcnt, 0)

    def on_sent(self, octets: int) -> None:
        """Data sent during the recovery, retransmissions and new data alike (prr_out)."""
        self.sent += octets

"""Proportional Rate Reduction (RFC 6937) against the RFC's own rules and its example, and in
a connection's recovery."""

from __future__ import annotations

from guest.stack.tcp import TcpConfig
from guest.stack.tcp.prr import Prr
from tests.unit.tcp_helpers import CLIENT_ISN, SERVER_ISN, open_client, seg

MSS = 1000
UNA = CLIENT_ISN + 1


def test_the_rfc_example_one_loss_sends_one_segment_per_two_delivered() -> None:
    """RFC 6937 section 6's example: 20 segments in flight, one lost, ssthresh 10: PRR sends
    one segment for every two the receiver reports, spread over the recovery."""
    prr = Prr(recover_fs=20 * MSS, ssthresh=10 * MSS)
    pipe = 19 * MSS  # the lost segment has left the pipe
    sends = []
    for _ in range(19):
        pipe -= MSS  # one more segment delivered
        cwnd = prr.on_ack(MSS, pipe, MSS)
        n = max(cwnd - pipe, 0) // MSS
        prr.on_sent(n * MSS)
        pipe += n * MSS
        sends.append(n)
    assert sends[:6] == [1, 0, 1, 0, 1, 0]
    assert sum(sends) == 10  # the window ends at ssthresh: half of RecoverFS, as NewReno
    assert pipe == 10 * MSS


def test_below_ssthresh_the_window_grows_back_no_faster_than_slow_start() -> None:
    """PRR-SSRB: once pipe fell below ssthresh (more lost than the reduction), each ACK
    allows what it delivered plus one MSS, not a burst up to ssthresh."""
    prr = Prr(recover_fs=20 * MSS, ssthresh=10 * MSS)
    cwnd = prr.on_ack(2 * MSS, 2 * MSS, MSS)  # most of the window was lost
    assert cwnd - 2 * MSS == 3 * MSS  # 2 delivered + 1
    prr.on_sent(3 * MSS)
    cwnd = prr.on_ack(MSS, 5 * MSS, MSS)
    assert cwnd - 5 * MSS == 2 * MSS  # max(3 - 3, 1) + 1


def _recovering(prr: bool) -> list[int]:
    """Ten segments out, the first lost, the other nine SACKed one ACK at a time: segments
    sent per ACK once the recovery began."""
    cfg = TcpConfig(timestamps=False, window_scaling=False, delayed_ack=False, mss=MSS, prr=prr)
    c = open_client(cfg, sack_permitted=True)
    c.send(bytes(40_000))
    c.poll(0.0)
    per_ack = []
    for k in range(2, 11):
        blocks = ((UNA + 1000, UNA + 1000 * k),)
        c.receive_segment(seg(SERVER_ISN + 1, UNA, sack_blocks=blocks), 0.05)
        if c._cc.in_recovery:
            per_ack.append(len(c.poll(0.05)))
        else:
            c.poll(0.05)
    return per_ack


def _longest_silence(per_ack: list[int]) -> int:
    run = longest = 0
    for n in per_ack:
        run = run + 1 if n == 0 else 0
        longest = max(longest, run)
    return longest


def test_a_recovery_with_prr_sends_steadily_without_it_in_a_burst_late() -> None:
    with_prr = _recovering(prr=True)
    without = _recovering(prr=False)
    assert sum(with_prr) >= sum(without) - 1
    # Without PRR, cwnd drops to ssthresh at once, below pipe: silence for four ACKs, then one
    # segment per ACK. PRR sends one for every two delivered from the start.
    assert without[:5] == [1, 0, 0, 0, 0]
    assert with_prr[:5] == [1, 0, 1, 0, 1]
    assert _longest_silence(with_prr) < _longest_silence(without)

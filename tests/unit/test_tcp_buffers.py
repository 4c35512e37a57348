"""Send buffer, receive buffer with reassembly and SACK blocks, sender scoreboard."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.tcp.recvbuf import ReceiveBuffer
from guest.stack.tcp.scoreboard import SackScoreboard
from guest.stack.tcp.sendbuf import SendBuffer


def test_send_buffer_is_bounded_and_non_blocking() -> None:
    sb = SendBuffer(10)
    assert sb.write(b"abcdef") == 6
    assert sb.write(b"ghijkl") == 4
    assert sb.free == 0
    assert sb.peek(2, 5) == b"cdefg"
    sb.consume(3)
    assert sb.peek(0, 3) == b"def"
    assert sb.write(memoryview(b"XYZW")) == 3
    assert sb.peek(0, 10) == b"defghijXYZ"


def test_send_buffer_peek_returns_independent_bytes() -> None:
    sb = SendBuffer(100)
    sb.write(b"hello world")
    p = sb.peek(0, 5)
    sb.consume(11)
    sb.write(b"other stuff")
    assert p == b"hello"


def test_in_order_delivery_and_partial_reads() -> None:
    rb = ReceiveBuffer(100)
    assert rb.write(0, b"hello ") == 6
    assert rb.write(6, memoryview(b"world")) == 5
    assert rb.recv(3) == b"hel"
    assert rb.recv() == b"lo world"
    assert rb.recv() == b""


def test_out_of_order_reassembly_and_overlaps() -> None:
    rb = ReceiveBuffer(100)
    assert rb.write(5, b"fghij") == 0
    assert rb.write(12, b"mn") == 0
    assert rb.has_ooo and rb.ooo_bytes == 7
    assert rb.write(3, b"defgh") == 0  # overlaps the stored piece
    assert rb.write(0, b"abc") == 10  # fills up to j
    assert rb.recv() == b"abcdefghij"
    assert rb.write(8, b"ijklmnop") == 6  # old part, new part, overlap with "mn"
    assert rb.recv() == b"klmnop"
    assert not rb.has_ooo


def test_duplicates_are_ignored() -> None:
    rb = ReceiveBuffer(100)
    rb.write(0, b"abc")
    assert rb.write(0, b"abc") == 0
    rb.write(10, b"xyz")
    rb.write(10, b"xyz")
    assert rb.ooo_bytes == 3


def test_recv_into() -> None:
    rb = ReceiveBuffer(100)
    rb.write(0, b"abc")
    rb.write(3, b"defg")
    buf = bytearray(5)
    assert rb.recv_into(buf) == 5
    assert bytes(buf) == b"abcde"
    assert rb.recv() == b"fg"


def test_sack_blocks_most_recent_first() -> None:
    rb = ReceiveBuffer(1000)
    rb.write(100, b"x" * 10)
    rb.write(300, b"x" * 10)
    rb.write(200, b"x" * 10)
    assert rb.sack_blocks(4) == [(200, 210), (300, 310), (100, 110)]
    rb.write(110, b"x" * 10)  # extends the first run
    assert rb.sack_blocks(2) == [(100, 120), (200, 210)]
    rb.write(0, b"x" * 100)  # fills the hole: first run delivered
    assert rb.sack_blocks(4) == [(200, 210), (300, 310)]


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=1, max_size=3000),
    st.lists(st.tuples(st.integers(0, 2999), st.integers(1, 400)), max_size=40),
    st.randoms(use_true_random=False),
)
def test_reassembly_reconstructs_the_stream(
    data: bytes, extra: list[tuple[int, int]], rnd: random.Random
) -> None:
    """Any arrival order of overlapping, duplicated pieces yields the original stream."""
    pieces = []
    pos = 0
    while pos < len(data):
        n = rnd.randint(1, 300)
        pieces.append((pos, data[pos : pos + n]))
        pos += n
    for start, n in extra:
        if start < len(data):
            pieces.append((start, data[start : start + n]))
    rnd.shuffle(pieces)
    rb = ReceiveBuffer(len(data))
    out = bytearray()
    for start, chunk in pieces:
        rb.write(start, chunk)
        if rnd.random() < 0.3:
            out += rb.recv(rnd.randint(0, 500))
    out += rb.recv()
    assert bytes(out) == data
    assert not rb.has_ooo and rb.nxt == len(data)


def test_scoreboard_merges_and_prunes() -> None:
    sb = SackScoreboard()
    assert sb.add(200, 300, 100, 1000)
    assert sb.add(400, 500, 100, 1000)
    assert sb.add(300, 400, 100, 1000)  # bridges both
    assert sb.ranges() == [(200, 500)]
    assert not sb.add(600, 1200, 100, 1000)  # beyond SND.MAX: ignored
    assert not sb.add(50, 90, 100, 1000)  # below SND.UNA (a D-SACK): ignored
    assert sb.add(700, 800, 100, 1000)
    assert sb.sacked_end_at(250) == 500
    assert sb.sacked_end_at(550) is None
    assert sb.next_sacked_start(500) == 700
    assert sb.highest == 800
    assert sb.sacked_bytes == 400
    sb.prune(450)
    assert sb.ranges() == [(450, 500), (700, 800)]
    sb.prune(900)
    assert not sb


def test_scoreboard_loss_boundary() -> None:
    """RFC 6675 IsLost(): more than 2 SMSS SACKed above, or three ranges above."""
    sb = SackScoreboard()
    sb.add(3000, 4000, 0, 10_000)
    assert sb.lost_boundary(1000) is None
    sb.add(5000, 6500, 0, 10_000)
    assert sb.lost_boundary(1000) == 3000  # 2500 bytes above 2999 > 2000
    sb2 = SackScoreboard()
    for lo in (1000, 3000, 5000):
        sb2.add(lo, lo + 10, 0, 10_000)
    assert sb2.lost_boundary(1000) == 1000  # three discontiguous ranges
    assert sb2.sacked_between(0, 3005) == 15

"""Send buffer, receive buffer with reassembly and SACK blocks, sender scoreboard."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.tcp.recvbuf import ReceiveBuffer
from guest.stack.tcp.scoreboard import MAX_RANGES, SackScoreboard
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


def _runs_of_pieces(rb: ReceiveBuffer) -> list[tuple[int, int]]:
    """The runs recomputed from the stored pieces, as `ooo_runs` did before it kept an index."""
    runs: list[tuple[int, int]] = []
    for start, piece in zip(rb._ooo_starts, rb._ooo_data, strict=True):
        end = start + len(piece)
        if runs and runs[-1][1] >= start:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end))
        else:
            runs.append((start, end))
    return runs


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(1, 40)), max_size=60),
    st.integers(1, 4),
)
def test_run_index_matches_the_stored_pieces(writes: list[tuple[int, int]], limit: int) -> None:
    """The runs SACK reports are kept incrementally; they must equal those of the pieces."""
    rb = ReceiveBuffer(1000)
    for start, n in writes:
        rb.write(start, b"x" * n)
        runs = _runs_of_pieces(rb)
        assert rb.ooo_runs() == runs
        blocks = rb.sack_blocks(limit)
        assert len(blocks) == min(limit, len(runs))
        assert len(set(blocks)) == len(blocks) and set(blocks) <= set(runs)


def test_tiny_out_of_order_segments_are_bounded() -> None:
    """Regression (found by guest.bench.fuzz): a peer sending 1-byte segments at every other offset
    made the buffer store one piece per byte and walk all of them for every ACK ("SegmentSmack":
    ~15 ms per segment with a 64 KiB window). Pieces are now bounded; what is not stored the
    sender resends, and the stream still completes."""
    rb = ReceiveBuffer(64 * 1024)
    for k in range(1, 20_000):
        rb.write(2 * k, b"x")
    assert len(rb.ooo_runs()) == rb.max_ooo_pieces == 1024
    assert rb.ooo_refused == 20_000 - 1 - 1024
    assert rb.ooo_bytes == 1024
    assert rb.write(0, b"y" * 50_000) == 50_000  # in order: the gaps fill, nothing is lost
    assert not rb.has_ooo
    assert rb.recv() == b"y" * 50_000
    # Honest segments never meet the bound: a window of 536-byte segments, every other lost.
    honest = ReceiveBuffer(256 * 1024)
    for k in range(1, 256 * 1024 // 536, 2):
        honest.write(k * 536, b"z" * 536)
    assert honest.ooo_refused == 0


def test_sack_blocks_do_not_walk_every_piece() -> None:
    """Regression (found by guest.bench.fuzz): `sack_blocks` runs for every ACK and used to rebuild
    the runs from all pieces; with thousands of pieces that cost milliseconds per segment."""
    rb = ReceiveBuffer(1 << 20)
    for k in range(1, 5001):
        rb.write(2 * k, b"x")
    start = time.perf_counter()
    for _ in range(5000):
        rb.sack_blocks(3)
    assert time.perf_counter() - start < 1.0  # ~0.02 s now, ~3 s walking 5000 pieces


def test_scoreboard_ranges_are_bounded() -> None:
    """Regression (found by guest.bench.fuzz): 1-byte SACK blocks at every other byte grew the
    scoreboard without bound, and recovery walks it on every ACK (~1 ms per ACK at 6000)."""
    sb = SackScoreboard()
    for k in range(1, 2000):
        sb.add(2 * k, 2 * k + 1, 0, 1 << 20)
    assert len(sb.ranges()) == MAX_RANGES
    assert not sb.add(100_000, 100_010, 0, 1 << 20)  # a new disjoint range: ignored
    assert sb.add(2, 10, 0, 1 << 20)  # merging with known ranges still works
    assert len(sb.ranges()) < MAX_RANGES

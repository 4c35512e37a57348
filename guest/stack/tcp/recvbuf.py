"""The receive buffer: in-order bytes for the application plus out-of-order reassembly.

Positions are unbounded stream offsets (0 = first byte after the peer's SYN), so reassembly
uses plain integer comparisons; the connection converts sequence numbers at the boundary.

Copying discipline: each payload byte is copied once, into an immutable `bytes` object, when
the segment arrives (the segment's payload usually views a frame buffer the driver will reuse).
In-order data joins a deque of chunks; out-of-order pieces wait in a sorted list and move into
the deque by reference when the gap closes. `recv()` copies out once more (or not at all when a
read takes exactly one whole chunk), so a byte costs at most two copies end to end.

Hostile peers: every segment may land out of order, one byte each ("SegmentSmack",
CVE-2018-5390, against Linux). So nothing per segment walks all stored pieces: the merged runs
that SACK blocks report are kept as a sorted index beside the pieces (found by bisection), and
the number of pieces is bounded by the buffer size (`max_ooo_pieces`, a piece counted as at
least `OOO_PIECE_BYTES`, as Linux charges every queued segment its overhead): beyond it, new
out-of-order data is not stored, which is always allowed (the sender resends what was never
acknowledged or SACKed). Honest segments, hundreds of bytes and more, never reach the bound.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque

#: A stored piece of payload; memoryviews are slices of `bytes` we own (never of frames).
Chunk = bytes | memoryview

#: How many recently received out-of-order offsets are remembered to order SACK blocks.
_RECENT = 4
#: Buffer bytes each stored out-of-order piece counts as, at least, for `max_ooo_pieces`.
OOO_PIECE_BYTES = 64


class ReceiveBuffer:
    """Bounded reassembly buffer delivering a byte stream in order."""

    __slots__ = (
        "_chunks",
        "_head",
        "_ooo_bytes",
        "_ooo_data",
        "_ooo_starts",
        "_ready",
        "_recent",
        "_run_ends",
        "_run_starts",
        "capacity",
        "max_ooo_pieces",
        "nxt",
        "ooo_refused",
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: Stream offset of the next byte expected in order (RCV.NXT minus the ISN and SYN).
        self.nxt = 0
        self._chunks: deque[Chunk] = deque()
        self._head = 0  # bytes of _chunks[0] already read
        self._ready = 0
        self._ooo_starts: list[int] = []
        self._ooo_data: list[Chunk] = []
        self._ooo_bytes = 0
        self._recent: list[int] = []
        #: The merged runs of the out-of-order pieces (what `ooo_runs` returns), kept sorted.
        self._run_starts: list[int] = []
        self._run_ends: list[int] = []
        #: Out-of-order pieces stored at most; segments that would add more are not stored.
        self.max_ooo_pieces = max(64, capacity // OOO_PIECE_BYTES)
        #: Out-of-order segments not stored because of that bound.
        self.ooo_refused = 0

    @property
    def ready_len(self) -> int:
        """In-order bytes waiting for the application."""
        return self._ready

    @property
    def ooo_bytes(self) -> int:
        """Bytes held beyond a gap."""
        return self._ooo_bytes

    @property
    def has_ooo(self) -> bool:
        """True while some data waits beyond a gap (SACK blocks must be sent)."""
        return bool(self._ooo_starts)

    def write(self, offset: int, data: bytes | memoryview) -> int:
        """Store a segment's payload at stream `offset`; return how far `nxt` advanced.

        The caller trims data to the receive window; here duplicates and overlaps are resolved.
        """
        n = len(data)
        end = offset + n
        nxt = self.nxt
        if n == 0 or end <= nxt:
            return 0
        if offset < nxt:
            data = memoryview(data)[nxt - offset :]
            offset = nxt
        if offset > nxt:
            self._insert_ooo(offset, end, data)
            return 0
        chunks = self._chunks
        chunks.append(bytes(data))  # the one copy; no-op when the payload already is `bytes`
        self._ready += end - nxt
        nxt = end
        starts = self._ooo_starts
        if starts and starts[0] <= nxt:
            nxt = self._drain_ooo(nxt)
        advanced = nxt - self.nxt
        self.nxt = nxt
        return advanced

    def _drain_ooo(self, nxt: int) -> int:
        """Move the out-of-order pieces that became contiguous into the in-order queue."""
        starts = self._ooo_starts
        datas = self._ooo_data
        chunks = self._chunks
        i = 0
        count = len(starts)
        while i < count and starts[i] <= nxt:
            start = starts[i]
            piece = datas[i]
            self._ooo_bytes -= len(piece)
            end = start + len(piece)
            if end > nxt:
                tail = piece if start == nxt else memoryview(piece)[nxt - start :]
                chunks.append(tail)
                self._ready += end - nxt
                nxt = end
            i += 1
        del starts[:i]
        del datas[:i]
        # A run starting at or below the new `nxt` was delivered whole (runs have no gaps).
        k = bisect_right(self._run_starts, nxt)
        del self._run_starts[:k]
        del self._run_ends[:k]
        if self._recent:
            self._recent = [r for r in self._recent if r >= nxt]
        return nxt

    def _insert_ooo(self, offset: int, end: int, data: bytes | memoryview) -> None:
        """Keep the parts of an out-of-order segment that no stored piece covers yet."""
        starts = self._ooo_starts
        datas = self._ooo_data
        self._note_recent(offset)
        k = bisect_right(self._run_starts, offset) - 1
        if k >= 0 and end <= self._run_ends[k]:
            return  # inside one stored run: nothing new (found without walking its pieces)
        # Find the uncovered sub-ranges of [offset, end).
        pieces: list[tuple[int, int]] = []
        i = bisect_right(starts, offset) - 1
        pos = offset
        if i >= 0:
            prev_end = starts[i] + len(datas[i])
            if prev_end > pos:
                pos = prev_end
        j = i + 1
        count = len(starts)
        while pos < end:
            if j < count and starts[j] <= pos:
                pos = max(pos, starts[j] + len(datas[j]))
                j += 1
                continue
            stop = min(end, starts[j]) if j < count else end
            pieces.append((pos, stop))
            pos = stop
        if not pieces:
            return
        if len(starts) + len(pieces) > self.max_ooo_pieces:
            self.ooo_refused += 1
            return
        if len(pieces) == 1 and pieces[0] == (offset, end):
            copies: list[tuple[int, Chunk]] = [(offset, bytes(data))]
        else:
            whole = memoryview(data)
            copies = [(a, bytes(whole[a - offset : b - offset])) for a, b in pieces]
        for start, piece in copies:
            k = bisect_left(starts, start)
            starts.insert(k, start)
            datas.insert(k, piece)
            self._ooo_bytes += len(piece)
        self._add_run(offset, end)

    def _add_run(self, start: int, end: int) -> None:
        """Merge [start, end) into the runs; touching runs merge, as `ooo_runs` promises."""
        run_starts = self._run_starts
        run_ends = self._run_ends
        i = bisect_left(run_ends, start)  # the first run ending at or after `start`
        j = i
        count = len(run_starts)
        while j < count and run_starts[j] <= end:
            j += 1
        if j > i:
            start = min(start, run_starts[i])
            end = max(end, run_ends[j - 1])
        run_starts[i:j] = [start]
        run_ends[i:j] = [end]

    def _note_recent(self, offset: int) -> None:
        """Remember that a segment just arrived at `offset` (RFC 2018 section 4 block order)."""
        recent = self._recent
        if offset in recent:
            recent.remove(offset)
        recent.insert(0, offset)
        del recent[_RECENT:]

    def ooo_runs(self) -> list[tuple[int, int]]:
        """Contiguous out-of-order ranges as (start, end) stream offsets, lowest first."""
        return list(zip(self._run_starts, self._run_ends, strict=True))

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` SACK blocks (stream offsets) in RFC 2018 section 4 order.

        The first block holds the most recently received segment; further blocks repeat the
        most recently reported ones, then any other runs, highest first. Costs a few
        bisections, however many runs there are (it runs for every ACK sent).
        """
        run_starts = self._run_starts
        run_ends = self._run_ends
        if not run_starts:
            return []
        chosen: list[tuple[int, int]] = []
        for offset in self._recent:
            i = bisect_right(run_starts, offset) - 1
            if i >= 0 and offset < run_ends[i]:
                run = (run_starts[i], run_ends[i])
                if run not in chosen:
                    chosen.append(run)
        i = len(run_starts) - 1
        while i >= 0 and len(chosen) < limit:
            run = (run_starts[i], run_ends[i])
            if run not in chosen:
                chosen.append(run)
            i -= 1
        return chosen[:limit]

    def recv(self, max_bytes: int = -1) -> bytes:
        """Take up to `max_bytes` in-order bytes (all of them when negative)."""
        n = self._ready if max_bytes < 0 or max_bytes > self._ready else max_bytes
        if n <= 0:
            return b""
        chunks = self._chunks
        head = self._head
        first = chunks[0]
        if head == 0 and len(first) == n and type(first) is bytes:
            chunks.popleft()
            self._ready -= n
            return first
        parts: list[Chunk] = []
        remaining = n
        while remaining:
            chunk = chunks[0]
            avail = len(chunk) - head
            if avail <= remaining:
                parts.append(memoryview(chunk)[head:] if head else chunk)
                chunks.popleft()
                head = 0
                remaining -= avail
            else:
                parts.append(memoryview(chunk)[head : head + remaining])
                head += remaining
                remaining = 0
        self._head = head
        self._ready -= n
        return b"".join(parts)

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Copy in-order bytes into `buffer`; return how many were copied."""
        out = memoryview(buffer).cast("B")
        n = min(len(out), self._ready)
        chunks = self._chunks
        head = self._head
        pos = 0
        while pos < n:
            chunk = chunks[0]
            take = min(len(chunk) - head, n - pos)
            out[pos : pos + take] = memoryview(chunk)[head : head + take]
            pos += take
            head += take
            if head == len(chunk):
                chunks.popleft()
                head = 0
        self._head = head
        self._ready -= n
        return n

    def clear(self) -> None:
        """Drop everything (the connection was reset)."""
        self._chunks.clear()
        self._head = 0
        self._ready = 0
        self._ooo_starts.clear()
        self._ooo_data.clear()
        self._ooo_bytes = 0
        self._recent.clear()
        self._run_starts.clear()
        self._run_ends.clear()

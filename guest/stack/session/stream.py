"""Byte-stream mode over a slot ring, for TCP data: message boundaries do not matter, so a write
fills as many slots as it needs and a read may end in the middle of a slot.

The writer copies once (into the slots) and publishes `head` once per `write`, however many
slots it fills. The reader hands out views (`peek`) and releases a slot only when every byte of
it was consumed (`consume`), so a reader that takes part of a slot (a TCP send buffer with little
room, an application's small `recv`) keeps its place in the slot without copying anything aside.
"""

from __future__ import annotations

from collections import deque

from .ring import BytesLike, RingConsumer, RingProducer


def byte_view(data: BytesLike) -> memoryview:
    """A flat unsigned-byte view of any bytes-like object (array('i'), numpy, ... included)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class StreamWriter:
    __slots__ = ("_ring", "_size")

    def __init__(self, ring: RingProducer) -> None:
        self._ring = ring
        self._size = ring.geometry.slot_size

    def write(self, data: BytesLike) -> int:
        """Copy as much of `data` as free slots hold; returns the bytes written (0 if full)."""
        view = byte_view(data)
        total = len(view)
        if not total:
            return 0
        size = self._size
        wanted = (total + size - 1) // size
        chunks = [view[i * size : (i + 1) * size] for i in range(min(wanted, self._ring.free()))]
        written = self._ring.push_many(chunks)
        return min(total, written * size)


class StreamReader:
    __slots__ = ("_buffered", "_offset", "_ring", "_views", "released")

    def __init__(self, ring: RingConsumer) -> None:
        self._ring = ring
        self.released = 0  # slots handed back so far (a change means: tell the producer)
        self._views: deque[memoryview] = deque()  # popped slots; the first read from _offset
        self._offset = 0
        self._buffered = 0  # bytes in _views past _offset

    def _fill(self, want: int) -> None:
        size = self._ring.geometry.slot_size
        while self._buffered < want:
            got = self._ring.pop_many((want - self._buffered) // size + 1)
            if not got:
                return
            self._views.extend(got)
            self._buffered += sum(map(len, got))

    def readable(self) -> bool:
        """True if at least one byte (or an empty slot to skip) is waiting."""
        return self._buffered > 0 or self._ring.available() > 0

    def peek(self, max_bytes: int) -> list[memoryview]:
        """Views of up to `max_bytes` next bytes, across slots, without consuming them."""
        self._fill(max_bytes)
        out: list[memoryview] = []
        total = 0
        first = True
        for view in self._views:
            if first and self._offset:
                view = view[self._offset :]
            first = False
            if total + len(view) > max_bytes:
                view = view[: max_bytes - total]
            if view:
                out.append(view)
                total += len(view)
            if total >= max_bytes:
                break
        return out

    def consume(self, nbytes: int) -> int:
        """Drop the next `nbytes` (at most what `peek` showed); returns slots released."""
        if not 0 <= nbytes <= self._buffered:
            raise ValueError(f"consume({nbytes}) with {self._buffered} bytes buffered")
        self._buffered -= nbytes
        released = 0
        views = self._views
        while views:
            rest = len(views[0]) - self._offset
            if nbytes < rest:
                self._offset += nbytes
                break
            nbytes -= rest
            views.popleft()
            self._offset = 0
            released += 1
        if released:
            self._ring.release(released)
            self.released += released
        return released

    def read_into(self, buf: BytesLike) -> int:
        """Copy up to len(buf) bytes into `buf`; returns the count (0 if nothing is waiting)."""
        target = byte_view(buf)
        pos = 0
        for view in self.peek(len(target)):
            target[pos : pos + len(view)] = view
            pos += len(view)
        if pos or self._views:
            self.consume(pos)
        return pos

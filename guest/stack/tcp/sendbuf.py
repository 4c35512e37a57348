"""The send buffer: bytes the application queued that are not yet acknowledged.

A single `bytearray` holds the bytes from SND.UNA onwards. Appending extends it and an ACK
deletes from the front; CPython implements `del buf[:n]` on a bytearray by moving a start
pointer (amortised O(1)), so the buffer never becomes quadratic. Each transmitted segment copies
its payload out once: a memoryview into the bytearray would pin it and forbid resizing.
"""

from __future__ import annotations

#: What `write` accepts (`collections.abc.Buffer` only exists from Python 3.12 on).
BytesLike = bytes | bytearray | memoryview


class SendBuffer:
    """A bounded byte queue with random-access reads for (re)transmission."""

    __slots__ = ("_buf", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def free(self) -> int:
        """Bytes `write` would accept right now."""
        return self.capacity - len(self._buf)

    def write(self, data: BytesLike) -> int:
        """Append as much of `data` as fits; return how many bytes were taken (non-blocking)."""
        with memoryview(data) as view:
            flat = view.cast("B") if view.ndim != 1 or view.format != "B" else view
            n = min(len(flat), self.capacity - len(self._buf))
            if n > 0:
                self._buf += flat[:n]
            return max(n, 0)

    def peek(self, offset: int, n: int) -> bytes:
        """Copy `n` bytes starting `offset` bytes after SND.UNA (for a segment's payload)."""
        with memoryview(self._buf) as view:
            return bytes(view[offset : offset + n])

    def consume(self, n: int) -> None:
        """Drop `n` acknowledged bytes from the front."""
        if n > 0:
            del self._buf[:n]

    def clear(self) -> None:
        """Forget everything (abort, reset)."""
        self._buf.clear()

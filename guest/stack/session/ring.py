"""A single-producer single-consumer ring of fixed-size slots in shared memory.

Layout. The ring lives in two areas, each written by one side only, so that each area can sit in
a region the other side maps read-only (see `shm`):

- the *producer area*: a 64-byte line holding `head` (u64), then `slots` slots of `stride` bytes,
  each an 8-byte header (u32 payload length, u32 metadata) and up to `slot_size` payload bytes;
- the *consumer area*: a 64-byte line holding `tail` (u64).

`head` and `tail` are monotonically increasing 64-bit slot counters (slot = counter & mask); at
a billion slots a second they wrap after 584 years, so wrap-around of the *counters* is ignored,
while the *slots* wrap every `slots` messages. `head - tail` is the number of full slots, from 0
(empty) to `slots` (full): no slot is sacrificed to tell full from empty.

Publication, and why it is safe without atomics:
- one writer per index: only the producer stores `head`, only the consumer stores `tail`;
- the producer writes the slot (payload, then header) and only then stores `head`; the consumer
  loads `head`, then reads the slots below it; it reads each header exactly once into locals and
  stores `tail` only after it is done with the slots (`release`).
- x86-64 (TSO) keeps stores in program order and loads in program order, and never moves a store
  before an earlier load, which is all the two sequences above need. No fence is needed on the
  data path (the doorbell, which needs store->load order, uses `shm.fence`).
- CPython: the indices are read and written through a `memoryview.cast("Q")`, whose item
  access is a `memcpy` of a constant 8 bytes, compiled to one aligned 8-byte `mov`: a peer never
  sees a torn counter. (`struct.pack_into("<Q", ...)`, by contrast, goes through
  `_PyLong_AsByteArray`, which stores byte by byte; native-order formats do a single store.)
  Slot bytes are stored by C `memcpy` calls that return before the next bytecode runs, and the
  compiler cannot sink them past the opaque call that stores `head`.
- A weaker memory model (arm64, POWER) would need a release barrier (`dmb ishst`) between the
  slot writes and the `head` store, and an acquire barrier (`dmb ishld`) between the `head` load
  and the slot reads (likewise for `tail` and slot reuse). Pure Python cannot emit those; a port
  would add a tiny C helper, or use `shm.fence` (lock-based, which is enough on arm64 only for
  the locked word itself, so not a substitute).

Trust. The consumer may face a hostile producer (the stack reading an application's transmit
ring): it validates `head` (must satisfy 0 <= head - tail <= slots) and every length (<= slot
size), clamps, counts and sets `corrupt`, and never raises or reads outside the mapping. The
producer likewise validates `tail`. What the owner of a corrupt ring does (the session server
resets that one socket) is up to it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from .shm import CACHE_LINE

HEADER: Final = 8
_HDR = struct.Struct("II")  # native order and alignment: one load/store per field
_LEN = struct.Struct("I")
INDEX_LINE: Final = CACHE_LINE

BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class RingGeometry:
    """`slots` (a power of two) slots of up to `slot_size` payload bytes each."""

    slots: int
    slot_size: int

    def __post_init__(self) -> None:
        if self.slots < 1 or self.slots & (self.slots - 1):
            raise ValueError(f"slots must be a power of two, got {self.slots}")
        if not 1 <= self.slot_size <= 0xFFFFFFFF - HEADER:
            raise ValueError(f"bad slot size {self.slot_size}")

    @property
    def stride(self) -> int:
        """Bytes per slot, header included, rounded to a cache line so slots never share one."""
        return (HEADER + self.slot_size + CACHE_LINE - 1) // CACHE_LINE * CACHE_LINE

    @property
    def producer_size(self) -> int:
        return INDEX_LINE + self.slots * self.stride

    @property
    def consumer_size(self) -> int:
        return INDEX_LINE

    @property
    def capacity(self) -> int:
        """Payload bytes the ring holds when every slot is full."""
        return self.slots * self.slot_size


@dataclass(slots=True)
class RingStats:
    pushed: int = 0
    popped: int = 0
    full: int = 0  # pushes refused (or cut short) for lack of a free slot
    bad_head: int = 0  # consumer saw an impossible head
    bad_length: int = 0  # consumer saw a length above the slot size (clamped)
    bad_tail: int = 0  # producer saw an impossible tail


class RingProducer:
    """The writing side: `push`/`push_many` copy into slots (one copy), or `reserve`/`commit`
    let the caller build a message in place (zero copies); `publish` stores `head`."""

    __slots__ = (
        "_head",
        "_mask",
        "_slot_size",
        "_slots",
        "_stride",
        "_tail",
        "_tail_seen",
        "corrupt",
        "geometry",
        "head",
        "stats",
    )

    def __init__(self, geometry: RingGeometry, producer: memoryview, consumer: memoryview) -> None:
        if len(producer) < geometry.producer_size or len(consumer) < geometry.consumer_size:
            raise ValueError("ring areas are smaller than the geometry needs")
        self.geometry = geometry
        self._head = producer[0:8].cast("Q")
        self._tail = consumer[0:8].cast("Q")
        self._slots = producer[INDEX_LINE : geometry.producer_size]
        self._mask = geometry.slots - 1
        self._stride = geometry.stride
        self._slot_size = geometry.slot_size
        self.head = self._head[0]  # unpublished progress lives here; a fresh ring starts at 0
        self._tail_seen = self.head - geometry.slots if self.head >= geometry.slots else 0
        self.corrupt = False
        self.stats = RingStats()

    def free(self) -> int:
        """Free slots now (reads the consumer's `tail`); 0 if `tail` is impossible."""
        tail = self._tail[0]
        used = self.head - tail
        if used < 0 or used > self.geometry.slots or tail < self._tail_seen:
            self.stats.bad_tail += 1
            self.corrupt = True
            return 0
        self._tail_seen = tail
        return self.geometry.slots - used

    def push(self, data: BytesLike, meta: int = 0) -> bool:
        """Copy one message into the next slot and publish it; False if the ring is full."""
        if self.free() == 0:
            self.stats.full += 1
            return False
        self._write(data, meta)
        self._head[0] = self.head
        return True

    def push_many(self, items: list[BytesLike], meta: int = 0) -> int:
        """Copy as many of `items` as fit, publishing `head` once; returns how many went in."""
        n = min(self.free(), len(items))
        if n < len(items):
            self.stats.full += 1
        for i in range(n):
            self._write(items[i], meta)
        if n:
            self._head[0] = self.head
        return n

    def _write(self, data: BytesLike, meta: int) -> None:
        length = len(data)
        if length > self._slot_size:
            raise ValueError(f"message of {length} bytes exceeds slot size {self._slot_size}")
        off = (self.head & self._mask) * self._stride
        self._slots[off + HEADER : off + HEADER + length] = data
        _HDR.pack_into(self._slots, off, length, meta)
        self.head += 1
        self.stats.pushed += 1

    def reserve(self) -> memoryview | None:
        """The payload area of the next free slot (writable), or None if the ring is full.
        Fill it, then `commit`; nothing is visible to the consumer before `publish`."""
        if self.head - self._tail_seen >= self.geometry.slots and self.free() == 0:
            return None
        off = (self.head & self._mask) * self._stride + HEADER
        return self._slots[off : off + self._slot_size]

    def commit(self, length: int, meta: int = 0) -> None:
        """Seal the reserved slot with its length; call `publish` (once per batch) after."""
        if not 0 <= length <= self._slot_size:
            raise ValueError(f"bad length {length}")
        _HDR.pack_into(self._slots, (self.head & self._mask) * self._stride, length, meta)
        self.head += 1
        self.stats.pushed += 1

    def publish(self) -> None:
        """Make every committed slot visible: the one store the consumer synchronises on."""
        self._head[0] = self.head

    def release_views(self) -> None:
        """Drop the views into the mapping so it can be unmapped."""
        for view in (self._head, self._tail, self._slots):
            view.release()


class RingConsumer:
    """The reading side: `pop_many` returns views into the slots (no copy), which stay valid
    until `release` hands those slots back to the producer."""

    __slots__ = (
        "_head",
        "_head_seen",
        "_mask",
        "_next",
        "_slot_size",
        "_slots",
        "_stride",
        "_tail",
        "corrupt",
        "geometry",
        "stats",
        "tail",
    )

    def __init__(self, geometry: RingGeometry, producer: memoryview, consumer: memoryview) -> None:
        if len(producer) < geometry.producer_size or len(consumer) < geometry.consumer_size:
            raise ValueError("ring areas are smaller than the geometry needs")
        self.geometry = geometry
        self._head = producer[0:8].cast("Q")
        self._tail = consumer[0:8].cast("Q")
        self._slots = producer[INDEX_LINE : geometry.producer_size]
        self._mask = geometry.slots - 1
        self._stride = geometry.stride
        self._slot_size = geometry.slot_size
        self.tail = self._tail[0]
        self._next = self.tail  # next slot to pop; slots in [tail, _next) are popped, unreleased
        self._head_seen = self.tail
        self.corrupt = False
        self.stats = RingStats()

    def available(self) -> int:
        """Full slots not yet popped (reads the producer's `head`); 0 if `head` is impossible."""
        head = self._head[0]
        used = head - self.tail
        if used < 0 or used > self.geometry.slots or head < self._head_seen:
            self.stats.bad_head += 1
            self.corrupt = True
            return 0
        self._head_seen = head
        return head - self._next

    def pending(self) -> int:
        """Slots popped but not yet released."""
        return self._next - self.tail

    def pop_many(self, max_n: int) -> list[memoryview]:
        """Views of up to `max_n` next messages (payload only; lengths checked as below)."""
        n = min(self.available(), max_n)
        out: list[memoryview] = []
        slots, mask, stride, limit = self._slots, self._mask, self._stride, self._slot_size
        index = self._next
        for _ in range(n):
            off = (index & mask) * stride
            length = _LEN.unpack_from(slots, off)[0]  # read once: the peer may rewrite it
            if length > limit:
                self.stats.bad_length += 1
                self.corrupt = True
                length = limit
            out.append(slots[off + HEADER : off + HEADER + length])
            index += 1
        self._next = index
        self.stats.popped += n
        return out

    def pop_many_meta(self, max_n: int) -> list[tuple[int, memoryview]]:
        """(metadata, view) of up to `max_n` next messages. A length above the slot size is
        clamped to it (and counted, and marks the ring corrupt): the view never leaves the
        slot, whatever the producer wrote."""
        n = min(self.available(), max_n)
        out: list[tuple[int, memoryview]] = []
        slots, mask, stride, limit = self._slots, self._mask, self._stride, self._slot_size
        index = self._next
        for _ in range(n):
            off = (index & mask) * stride
            length, meta = _HDR.unpack_from(slots, off)  # read once: the peer may rewrite it
            if length > limit:
                self.stats.bad_length += 1
                self.corrupt = True
                length = limit
            out.append((meta, slots[off + HEADER : off + HEADER + length]))
            index += 1
        self._next = index
        self.stats.popped += n
        return out

    def release(self, n: int) -> None:
        """Hand the `n` oldest popped slots back to the producer (publishes `tail`)."""
        if not 0 <= n <= self._next - self.tail:
            raise ValueError(f"release({n}) with {self._next - self.tail} slots popped")
        if n:
            self.tail += n
            self._tail[0] = self.tail

    def release_views(self) -> None:
        """Drop the views into the mapping so it can be unmapped."""
        for view in (self._head, self._tail, self._slots):
            view.release()

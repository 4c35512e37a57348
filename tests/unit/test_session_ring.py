"""SPSC slot ring: order, wrap-around, full/empty, hostile producers and consumers, the stream
helpers, and 50 MB moved between two real processes with the sha256 compared."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest.stack.session.doorbell import Doorbell, Notifier, Waiter
from guest.stack.session.ring import HEADER, INDEX_LINE, RingConsumer, RingGeometry, RingProducer
from guest.stack.session.shm import SharedRegion
from guest.stack.session.stream import StreamReader, StreamWriter

ROOT = Path(__file__).resolve().parents[2]


def make_ring(slots: int = 8, slot_size: int = 100) -> tuple[RingProducer, RingConsumer, bytearray]:
    """Both ends over one private buffer: producer area first, consumer area after."""
    geometry = RingGeometry(slots, slot_size)
    buf = bytearray(geometry.producer_size + geometry.consumer_size)
    view = memoryview(buf)
    prod_area, cons_area = view[: geometry.producer_size], view[geometry.producer_size :]
    return (
        RingProducer(geometry, prod_area, cons_area),
        RingConsumer(geometry, prod_area, cons_area),
        buf,
    )


def test_geometry_validation() -> None:
    with pytest.raises(ValueError):
        RingGeometry(3, 100)
    with pytest.raises(ValueError):
        RingGeometry(4, 0)
    assert RingGeometry(4, 100).stride % 64 == 0


def test_push_pop_in_order_and_views_are_zero_copy() -> None:
    prod, cons, buf = make_ring()
    assert cons.available() == 0 and cons.pop_many(4) == []
    assert prod.push(b"one") and prod.push(b"two", meta=7)
    got = cons.pop_many_meta(10)
    assert [(m, bytes(v)) for m, v in got] == [(0, b"one"), (7, b"two")]
    off = INDEX_LINE + HEADER  # the first slot's payload
    buf[off : off + 3] = b"ONE"
    assert bytes(got[0][1]) == b"ONE"  # a view into the ring, not a copy
    cons.release(2)
    assert prod.free() == 8


def test_full_and_empty() -> None:
    prod, cons, _ = make_ring(slots=4)
    assert prod.push_many([b"a", b"b", b"c", b"d", b"e"]) == 4
    assert prod.free() == 0 and not prod.push(b"x") and prod.reserve() is None
    assert prod.stats.full == 2
    views = cons.pop_many(2)
    assert prod.free() == 0  # popped is not released
    cons.release(len(views))
    assert prod.free() == 2
    with pytest.raises(ValueError):
        cons.release(1)  # nothing popped any more
    assert [bytes(v) for v in cons.pop_many(10)] == [b"c", b"d"]
    cons.release(2)
    assert cons.available() == 0 and prod.free() == 4
    with pytest.raises(ValueError):
        prod.push(b"y" * 101)  # larger than a slot


def test_wrap_around_many_times_with_varying_sizes() -> None:
    prod, cons, _ = make_ring(slots=4, slot_size=64)
    rng = random.Random(1)
    sent: list[bytes] = []
    received: list[bytes] = []
    for _ in range(2000):
        batch = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
        n = prod.push_many(batch)
        sent.extend(batch[:n])
        views = cons.pop_many(rng.randint(1, 4))
        received.extend(bytes(v) for v in views)
        cons.release(len(views))
    views = cons.pop_many(10)
    received.extend(bytes(v) for v in views)
    assert received == sent and prod.head > 1000  # counters went far past the slot count


def test_reserve_commit_publish() -> None:
    prod, cons, _ = make_ring(slots=4)
    for i in range(3):
        slot = prod.reserve()
        assert slot is not None
        slot[:2] = bytes([i, i])
        prod.commit(2, meta=i)
    assert cons.available() == 0  # nothing visible before publish
    prod.publish()
    assert [(m, bytes(v)) for m, v in cons.pop_many_meta(8)] == [
        (i, bytes([i, i])) for i in range(3)
    ]


def test_garbage_length_is_clamped_and_flagged() -> None:
    prod, cons, buf = make_ring(slots=4, slot_size=100)
    prod.push(b"fine")
    struct.pack_into("II", buf, INDEX_LINE, 0xFFFFFFFF, 0)  # the producer lies about a length
    (view,) = cons.pop_many(1)
    assert len(view) == 100 and cons.corrupt and cons.stats.bad_length == 1


@pytest.mark.parametrize("head", [5, 2**64 - 1])
def test_garbage_head_is_rejected(head: int) -> None:
    prod, cons, buf = make_ring(slots=4)
    prod.push(b"x")
    struct.pack_into("Q", buf, 0, head)  # more than `slots` ahead of tail
    assert cons.available() == 0 and cons.pop_many(8) == []
    assert cons.corrupt and cons.stats.bad_head >= 1


def test_head_going_backwards_is_rejected() -> None:
    prod, cons, buf = make_ring(slots=4)
    prod.push_many([b"a", b"b"])
    assert cons.available() == 2
    struct.pack_into("Q", buf, 0, 1)
    assert cons.available() == 0 and cons.corrupt


def test_garbage_tail_is_rejected_by_producer() -> None:
    geometry = RingGeometry(4, 100)
    prod, _, buf = make_ring(slots=4)
    struct.pack_into("Q", buf, geometry.producer_size, 3)  # tail beyond head
    assert prod.free() == 0 and not prod.push(b"x") and prod.corrupt


def test_stream_partial_reads_across_slots() -> None:
    prod, cons, _ = make_ring(slots=4, slot_size=10)
    writer, reader = StreamWriter(prod), StreamReader(cons)
    assert writer.write(b"0123456789abcdefghijXYZ") == 23  # 3 slots
    assert writer.write(b"k" * 30) == 10  # one slot left
    out = bytearray(4)
    assert reader.read_into(out) == 4 and out == b"0123"
    assert b"".join(reader.peek(8)) == b"456789ab"
    assert reader.consume(8) == 1  # the first slot is now fully read
    assert writer.write(b"L" * 30) == 10
    rest = bytearray(100)
    n = reader.read_into(rest)
    assert rest[:n] == b"cdefghijXYZ" + b"k" * 10 + b"L" * 10
    assert not reader.readable() and reader.read_into(rest) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 40)), max_size=60))
def test_stream_matches_a_byte_queue(ops: list[tuple[int, int]]) -> None:
    prod, cons, _ = make_ring(slots=4, slot_size=16)
    writer, reader = StreamWriter(prod), StreamReader(cons)
    model = bytearray()
    counter = 0
    for write_len, read_len in ops:
        data = bytes((counter + i) % 251 for i in range(write_len))
        n = writer.write(data)
        assert n <= write_len
        model += data[:n]
        counter += n
        buf = bytearray(read_len)
        got = reader.read_into(buf)
        assert buf[:got] == model[:got]
        del model[:got]
    rest = bytearray(1000)
    got = reader.read_into(rest)
    assert rest[:got] == model


# ------------------------------------------------------------------ two real processes

GEOMETRY = RingGeometry(64, 16 * 1024 - 64)
FLAGS = 64  # each region: a line of sleep flags first, then the ring area


def child_consume(fds: list[int], expect_bytes: int) -> None:
    """Runs in the child: consume until `expect_bytes` arrived, print sha256 and counts."""
    prod_fd, cons_fd, bell_fd, back_fd = fds
    prod = SharedRegion.attach(prod_fd, FLAGS + GEOMETRY.producer_size, writable=False)
    cons = SharedRegion.attach(cons_fd, FLAGS + GEOMETRY.consumer_size, writable=True)
    ring = RingConsumer(GEOMETRY, prod.view[FLAGS:], cons.view[FLAGS:])
    own_flags = cons.view[:8].cast("Q")
    waiter = Waiter(Doorbell(bell_fd), own_flags, 0, spin=0.0)
    notifier = Notifier(Doorbell(back_fd), prod.view[:8].cast("Q"), 0)
    digest = hashlib.sha256()
    received = messages = 0
    while received < expect_bytes:
        waiter.wait(lambda: ring.available() > 0, None)
        views = ring.pop_many(16)
        for view in views:
            digest.update(view)
            received += len(view)
        messages += len(views)
        ring.release(len(views))
        notifier.notify()  # the producer may sleep on a full ring
    result = {"sha256": digest.hexdigest(), "bytes": received, "messages": messages}
    result["corrupt"] = ring.corrupt
    result["rescued"] = waiter.stats.rescued
    print(json.dumps(result))


def spawn_child(call: str, fds: list[int]) -> subprocess.Popen[str]:
    code = f"import tests.unit.{Path(__file__).stem} as t; t.{call}"
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, pass_fds=fds, stdout=subprocess.PIPE, text=True
    )


def test_fifty_megabytes_between_processes() -> None:
    total = 50 * 1024 * 1024
    prod_region = SharedRegion.create(FLAGS + GEOMETRY.producer_size)
    cons_region = SharedRegion.create_for_peer(FLAGS + GEOMETRY.consumer_size)
    to_child, to_parent = Doorbell(), Doorbell()
    fds = [
        prod_region.peer_fd(readonly=True),
        cons_region.peer_fd(readonly=False),
        to_child.fd,
        to_parent.fd,
    ]
    child = spawn_child(f"child_consume({fds}, {total})", fds)
    for fd in fds[:2]:
        os.close(fd)
    ring = RingProducer(GEOMETRY, prod_region.view[FLAGS:], cons_region.view[FLAGS:])
    notifier = Notifier(to_child, cons_region.view[:8].cast("Q"), 0)
    waiter = Waiter(to_parent, prod_region.view[:8].cast("Q"), 0, spin=0.0)
    rng = random.Random(50)
    pool = rng.randbytes(1 << 20)
    digest = hashlib.sha256()
    sent = 0
    while sent < total:
        batch = []
        for _ in range(rng.randint(1, 24)):
            size = min(rng.choice((1, 7, 100, 1460, 4096, 9000, GEOMETRY.slot_size)), total - sent)
            start = rng.randrange(0, len(pool) - size)
            batch.append(pool[start : start + size])
            sent += size
            if sent == total:
                break
        pos = 0
        while pos < len(batch):
            n = ring.push_many(batch[pos:])
            for item in batch[pos : pos + n]:
                digest.update(item)
            pos += n
            notifier.notify()
            if pos < len(batch):
                waiter.wait(lambda: ring.free() > 0, 10.0)
    out, _ = child.communicate(timeout=60)
    result = json.loads(out)
    assert child.returncode == 0
    assert result["bytes"] == total and result["sha256"] == digest.hexdigest()
    assert not result["corrupt"] and result["rescued"] == 0 and waiter.stats.rescued == 0
    assert ring.stats.full > 0  # the ring really wrapped and filled up
    for bell in (to_child, to_parent):
        bell.close()

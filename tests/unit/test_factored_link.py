"""The driver<->protocol link of the factored stack, between two real processes."""

from __future__ import annotations

import os
import select

import pytest

from guest.bench.link import measure
from guest.stack.factored.link import DRIVER, PROTOCOL, FrameLink, LinkGeometry
from guest.stack.factored.shmdev import ShmDevice
from guest.stack.session.ring import RingGeometry

HEADER = bytes(range(10))


def _echo_driver(link: FrameLink, frames: int) -> int:
    """Fork a driver side that sends every frame it gets back, `frames` of them."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        end = link.end(DRIVER)
        poller = select.poll()
        poller.register(end.fileno(), select.POLLIN)
        echoed = 0
        while echoed < frames:
            views = end.inbox.pop_many(16)
            if not views:
                if end.prepare_to_sleep():
                    poller.poll(5000)
                    end.woke()
                continue
            for view in views:
                while not end.out.push(view):  # the ring is full: wake the reader, wait
                    end.notifier.notify()
                    os.sched_yield()
            end.inbox.release(len(views))
            end.notifier.notify()
            echoed += len(views)
        code = 0
    finally:
        os._exit(code)


def test_frames_cross_both_ways_through_the_shm_device() -> None:
    link = FrameLink(LinkGeometry.for_frames(4096, rx_slots=8, tx_slots=8))
    frames = [bytes([i]) * (60 + 97 * i) for i in range(20)]
    pid = _echo_driver(link, len(frames))
    dev = ShmDevice(link.end(PROTOCOL), "test0", 1500, b"\x02" * 6, 10)
    try:
        received: list[bytes] = []
        last: list[memoryview] = []
        sent = 0
        poller = select.poll()
        poller.register(dev.fileno(), select.POLLIN)
        while len(received) < len(frames):
            while sent < len(frames) and dev.send(frames[sent], HEADER):
                sent += 1
            dev.flush()
            views = dev.recv_batch(4)
            if views:
                last = views
                received += [bytes(v) for v in views]
            elif dev.prepare_to_sleep():
                assert poller.poll(5000), "the driver side never rang"
        assert received == [HEADER + f for f in frames]
        assert dev.recv_batch(4) == []
        with pytest.raises(ValueError):  # that call handed the last batch's slots back
            bytes(last[0])
        assert dev.stats.tx_frames == dev.stats.rx_frames == len(frames)
    finally:
        _, status = os.waitpid(pid, 0)
        dev.close()
    assert status == 0


def test_a_frame_larger_than_a_slot_is_refused_not_cut() -> None:
    link = FrameLink(LinkGeometry(RingGeometry(4, 256), RingGeometry(4, 256)))
    dev = ShmDevice(link.end(PROTOCOL), "test0", 1500, b"\x02" * 6, 0)
    try:
        with pytest.raises(ValueError, match="exceeds"):
            dev.send(b"x" * 300)
        assert all(dev.send(b"y" * 200) for _ in range(4))
        assert not dev.send(b"z")  # the ring is full: refused, counted
        assert dev.stats.tx_full == 1
    finally:
        dev.close()
        link.close()


def test_crossing_bench_moves_frames_intact() -> None:
    result = measure(1514, count=2000, rounds=50)
    assert result["intact"]
    assert result["batched_us_per_crossing"] > 0 and result["pingpong_us_per_crossing"] > 0

"""What one driver<->protocol crossing costs: `python3 -m guest.bench.link`.

Two processes joined by a real `FrameLink` (the launcher's shared memory and doorbells),
measured three ways in one run, so the figures compare:

- **batched**: the driver side pushes frames as fast as the ring takes them and the protocol
  side pops and releases them, both busy: the per-frame cost of a crossing when no one sleeps
  (one copy into the slot, the index stores, the consumer's view);
- **ping-pong**: one frame each way at a time, each side sleeping on its doorbell in between:
  the cost of a crossing that has to wake the other domain (eventfd write, poll wakeup,
  context switch), i.e. what a request/response pays per crossing;
- **in-process**: the same frames handed over by a plain function call, the monolithic
  stack's "crossing", as the baseline.

Prints one JSON object (microseconds per crossing, frames per second). No timed assertions:
the test only checks that the figures exist and the frames arrived intact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import sys
import time

from guest.stack.factored.link import (
    DRIVER,
    PROTOCOL,
    SUPER_FRAME,
    FrameLink,
    LinkEnd,
    LinkGeometry,
)
from guest.stack.session.ring import RingGeometry


def _sleep_until_inbox(end: LinkEnd, poller: select.poll) -> None:
    while not end.inbox.available():
        if end.prepare_to_sleep():
            poller.poll(1000)
            end.woke()


def _poller(end: LinkEnd) -> select.poll:
    p = select.poll()
    p.register(end.fileno(), select.POLLIN)
    return p


def _batched_producer(end: LinkEnd, frames: list[bytes], count: int) -> None:
    out, sent, n = end.out, 0, len(frames)
    while sent < count:
        k = out.push_many([frames[(sent + i) % n] for i in range(min(64, count - sent))])
        if k:
            sent += k
            end.notifier.notify()
        else:
            os.sched_yield()


def _batched_consumer(end: LinkEnd, count: int) -> str:
    digest = hashlib.sha256()
    got, poller = 0, _poller(end)
    while got < count:
        views = end.inbox.pop_many(64)
        if not views:
            _sleep_until_inbox(end, poller)
            continue
        for v in views:
            digest.update(v)
        got += len(views)
        end.inbox.release(len(views))
    return digest.hexdigest()


def _pingpong(end: LinkEnd, frame: bytes, rounds: int, first: bool) -> None:
    """`rounds` round trips of one frame; the `first` side serves first."""
    poller = _poller(end)
    for _ in range(rounds):
        if not first:
            _sleep_until_inbox(end, poller)
            end.inbox.pop_many(1)
            end.inbox.release(1)
        end.out.push(frame)
        end.notifier.notify()
        if first:
            _sleep_until_inbox(end, poller)
            end.inbox.pop_many(1)
            end.inbox.release(1)


def _child(link: FrameLink, role: str, body) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body(link.end(role))
            code = 0
        finally:
            os._exit(code)
    return pid


def measure(frame_size: int, count: int, rounds: int) -> dict:
    geometry = LinkGeometry(RingGeometry(256, SUPER_FRAME), RingGeometry(256, SUPER_FRAME))
    frames = [os.urandom(frame_size) for _ in range(16)]
    expected = hashlib.sha256()
    for i in range(count):
        expected.update(frames[i % len(frames)])

    # Batched, driver -> protocol.
    link = FrameLink(geometry)
    pid = _child(link, DRIVER, lambda end: _batched_producer(end, frames, count))
    end = link.end(PROTOCOL)
    t0 = time.perf_counter()
    digest = _batched_consumer(end, count)
    batched_s = time.perf_counter() - t0
    os.waitpid(pid, 0)
    end.close()

    # Ping-pong: each crossing wakes a sleeper.
    link = FrameLink(geometry)
    pid = _child(link, DRIVER, lambda end: _pingpong(end, frames[0], rounds, first=False))
    end = link.end(PROTOCOL)
    t0 = time.perf_counter()
    _pingpong(end, frames[0], rounds, first=True)
    pingpong_s = time.perf_counter() - t0
    os.waitpid(pid, 0)
    end.close()

    # In-process: the monolithic stack hands a frame up with a call.
    sink = hashlib.sha256()
    deliver = sink.update
    t0 = time.perf_counter()
    for i in range(count):
        deliver(frames[i % len(frames)])
    inproc_s = time.perf_counter() - t0

    return {
        "frame_bytes": frame_size,
        "frames": count,
        "intact": digest == expected.hexdigest() == sink.hexdigest(),
        "batched_us_per_crossing": round(batched_s / count * 1e6, 2),
        "batched_frames_per_s": round(count / batched_s),
        "pingpong_us_per_crossing": round(pingpong_s / (2 * rounds) * 1e6, 1),
        "inprocess_us_per_frame": round(inproc_s / count * 1e6, 2),
        "cpus": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.bench.link")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5_000)
    ap.add_argument("--sizes", default="64,1514,65536", help="frame sizes, comma separated")
    args = ap.parse_args(argv)
    results = [
        measure(int(size), args.frames, args.rounds) for size in args.sizes.split(",") if size
    ]
    print(json.dumps({"bench": "factored-link", "results": results}))
    return 0 if all(r["intact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Cost of the app<->stack boundary: `python3 -m guest.bench.session`.

Runs, in one go and on this machine, the same three transfers over four paths, the far end
always being another process:

- `unix socketpair`: the baseline, a kernel byte stream (what an app talking to a stack server
  over a socket would pay);
- `session rings`: `StackClient` <-> `SessionServer` + the fake backend (discard, chargen, echo),
  i.e. the real boundary: control socket, per-socket rings, doorbells with sleep flags;
- `session, always ring`: the same with doorbell suppression off (a syscall per notification);
- `bare ring`: one ring each way and doorbells, no session logic: the ceiling.

Transfers: app->stack MB/s (sendall in 256 KiB writes, timed until the far end took it all),
stack->app MB/s (recv_into a 256 KiB buffer), and the round trip of a 64-byte message (µs,
median and 99th percentile), with the eventfd writes per round trip (both sides; for the bare
ring, twice our side's). Figures are CPython figures and depend on the host's cores and on
whatever else runs there: compare rows of one run, and repeat.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from guest.stack.session.backend import run
from guest.stack.session.channel import DEFAULT_GEOMETRY
from guest.stack.session.client import StackClient, StackSocket
from guest.stack.session.doorbell import Doorbell, Notifier, Waiter
from guest.stack.session.ring import RingConsumer, RingGeometry, RingProducer
from guest.stack.session.server import SessionServer
from guest.stack.session.shm import SharedRegion
from guest.stack.session.stream import StreamReader, StreamWriter
from guest.testing.fake_backend import CHARGEN, DISCARD, ECHO, FakeBackend

BLOCK = 256 * 1024
MSG = 64
REMOTE = ("198.18.0.2", 0)


@dataclass
class Row:
    name: str
    up: float  # MB/s app -> stack
    down: float  # MB/s stack -> app
    rtt_p50: float  # µs
    rtt_p99: float
    bells: float  # eventfd writes per round trip (both sides), -1 if not applicable


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def _rtt(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


# ------------------------------------------------------------------------ socketpair


def _socket_peer(sock: socket.socket, other: socket.socket, total: int) -> None:
    other.close()  # the parent's end, inherited by fork: else our echo loop never sees EOF
    buf = bytearray(BLOCK)
    got = 0
    while got < total:  # sink
        got += sock.recv_into(buf)
    sock.send(b"k")
    block = bytes(BLOCK)  # source
    sent = 0
    while sent < total:
        sock.sendall(block)
        sent += BLOCK
    while n := sock.recv_into(buf):  # echo
        sock.sendall(memoryview(buf)[:n])


def bench_socketpair(total: int, iterations: int) -> Row:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = mp.get_context("fork").Process(target=_socket_peer, args=(theirs, ours, total))
    peer.start()
    theirs.close()
    block = bytes(BLOCK)
    start = time.perf_counter()
    for _ in range(total // BLOCK):
        ours.sendall(block)
    ours.recv(1)
    up = _mbps(total, time.perf_counter() - start)
    buf = bytearray(BLOCK)
    got = 0
    start = time.perf_counter()
    while got < total:
        got += ours.recv_into(buf)
    down = _mbps(total, time.perf_counter() - start)
    samples = []
    msg, reply = bytes(MSG), bytearray(MSG)
    for _ in range(iterations):
        start = time.perf_counter()
        ours.sendall(msg)
        n = 0
        while n < MSG:
            n += ours.recv_into(memoryview(reply)[n:])
        samples.append(time.perf_counter() - start)
    ours.close()
    peer.join()
    return Row("unix socketpair", up, down, *_rtt(samples), -1)


# ---------------------------------------------------------------------------- session


def _serve(path: str, always: bool, control: Connection) -> None:
    server = SessionServer(path, always_ring=always)
    backend = FakeBackend(server, hash_discard=False)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(server, backend, stop, 1.0))
    thread.start()
    control.send("ready")
    while (command := control.recv()) != "stop":
        if command == "rings":
            control.send(server.bell_stats.rings)
    stop.set()
    thread.join()
    server.close()


def _recv_exactly(sock: StackSocket, buf: bytearray) -> None:
    view = memoryview(buf)
    n = 0
    while n < len(buf):
        n += sock.recv_into(view[n:])


def bench_session(total: int, iterations: int, always: bool) -> Row:
    path = f"@stackbed-bench-{os.getpid()}-{int(always)}"
    ours, theirs = mp.get_context("fork").Pipe()
    server = mp.get_context("fork").Process(target=_serve, args=(path, always, theirs))
    server.start()
    assert ours.recv() == "ready"
    client = StackClient(path, always_ring=always)
    sink = client.connect((REMOTE[0], DISCARD))
    block = bytes(BLOCK)
    start = time.perf_counter()
    for _ in range(total // BLOCK):
        sink.sendall(block)
    sink.shutdown_write()
    sink.recv(1)  # EOF once the stack has taken every byte
    up = _mbps(total, time.perf_counter() - start)
    sink.close()
    source = client.connect((REMOTE[0], CHARGEN))
    buf = bytearray(BLOCK)
    got = 0
    start = time.perf_counter()
    while got < total:
        got += source.recv_into(buf)
    down = _mbps(total, time.perf_counter() - start)
    source.close()
    echo = client.connect((REMOTE[0], ECHO))
    msg, reply = bytes(MSG), bytearray(MSG)
    for _ in range(100):  # warm up
        echo.sendall(msg)
        _recv_exactly(echo, reply)
    ours.send("rings")
    server_rings = ours.recv()
    client_rings = client.bell_stats.rings
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        echo.sendall(msg)
        _recv_exactly(echo, reply)
        samples.append(time.perf_counter() - start)
    ours.send("rings")
    bells = (ours.recv() - server_rings + client.bell_stats.rings - client_rings) / iterations
    echo.close()
    client.close()
    ours.send("stop")
    server.join()
    name = "session, always ring" if always else "session rings"
    return Row(name, up, down, *_rtt(samples), bells)


# --------------------------------------------------------------------------- bare ring


class _Duplex:
    """Two rings (a->b, b->a) with a doorbell and sleep flag per side, in sealed regions."""

    def __init__(self, geometry: RingGeometry) -> None:
        self.geometry = geometry
        size = 64 + geometry.producer_size + geometry.consumer_size
        self.a = SharedRegion.create(size)  # written by side a: flag, a->b head+slots, b->a tail
        self.b = SharedRegion.create_for_peer(size)
        self.bell_a, self.bell_b = Doorbell(), Doorbell()

    def side(self, me: str) -> tuple[RingProducer, RingConsumer, Waiter, Notifier]:
        g = self.geometry
        mine, theirs = (self.a, self.b) if me == "a" else (self.b, self.a)
        bells = (self.bell_a, self.bell_b)
        my_bell, their_bell = bells if me == "a" else bells[::-1]
        out_prod = mine.view[64 : 64 + g.producer_size]
        out_cons = theirs.view[64 + g.producer_size :]
        in_prod = theirs.view[64 : 64 + g.producer_size]
        in_cons = mine.view[64 + g.producer_size :]
        waiter = Waiter(my_bell, mine.view[:8].cast("Q"), 0)
        notifier = Notifier(their_bell, theirs.view[:8].cast("Q"), 0)
        out, inbox = RingProducer(g, out_prod, out_cons), RingConsumer(g, in_prod, in_cons)
        return out, inbox, waiter, notifier


def _ring_peer(duplex: _Duplex, total: int) -> None:
    # The child re-maps b writable from the fd (the parent's own mapping of b is read-only).
    duplex.b = SharedRegion.attach(duplex.b.peer_fd(readonly=False), duplex.b.size, writable=True)
    out, inbox, waiter, notifier = duplex.side("b")
    reader = StreamReader(inbox)
    got = 0
    while got < total:  # sink: views, no copy out
        waiter.wait(reader.readable, None)
        views = reader.peek(BLOCK)
        n = sum(len(v) for v in views)
        reader.consume(n)
        got += n
        notifier.notify()
    writer = StreamWriter(out)
    out.push(b"k")
    notifier.notify()
    block = memoryview(bytes(BLOCK))  # source
    sent = 0
    while sent < total:
        n = writer.write(block)
        sent += n
        notifier.notify()
        if not n:
            waiter.wait(lambda: out.free() > 0, None)
    while True:  # echo
        waiter.wait(lambda: inbox.available() > 0, None)
        (view,) = inbox.pop_many(1)
        if not view:
            return
        while not out.push(view):
            waiter.wait(lambda: out.free() > 0, None)
        inbox.release(1)
        notifier.notify()


def bench_bare_ring(total: int, iterations: int) -> Row:
    duplex = _Duplex(DEFAULT_GEOMETRY)
    peer = mp.get_context("fork").Process(target=_ring_peer, args=(duplex, total))
    peer.start()
    out, inbox, waiter, notifier = duplex.side("a")
    writer, reader = StreamWriter(out), StreamReader(inbox)
    block = memoryview(bytes(BLOCK))
    start = time.perf_counter()
    sent = 0
    while sent < total:
        n = writer.write(block)
        sent += n
        notifier.notify()
        if not n:
            waiter.wait(lambda: out.free() > 0, None)
    waiter.wait(lambda: inbox.available() > 0, None)
    up = _mbps(total, time.perf_counter() - start)
    inbox.pop_many(1)
    inbox.release(1)
    buf = bytearray(BLOCK)
    got = 0
    start = time.perf_counter()
    while got < total:
        waiter.wait(reader.readable, None)
        got += reader.read_into(buf)
        notifier.notify()
    down = _mbps(total, time.perf_counter() - start)
    msg = bytes(MSG)
    samples = []
    rings = notifier.stats.rings
    for _ in range(iterations):
        start = time.perf_counter()
        out.push(msg)
        notifier.notify()
        waiter.wait(lambda: inbox.available() > 0, None)
        inbox.pop_many(1)
        inbox.release(1)
        samples.append(time.perf_counter() - start)
    bells = (notifier.stats.rings - rings) / iterations  # ours only; the peer's are not seen
    out.push(b"")
    notifier.notify()
    peer.join()
    return Row("bare ring", up, down, *_rtt(samples), bells * 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbytes", type=int, default=256, help="bytes per throughput run (MB)")
    parser.add_argument("--rtt", type=int, default=5000, help="round trips per latency run")
    args = parser.parse_args()
    total = args.mbytes * 1024 * 1024 // BLOCK * BLOCK
    geometry = DEFAULT_GEOMETRY
    print(
        f"app<->stack boundary, CPython {'.'.join(map(str, sys.version_info[:3]))}, "
        f"{len(os.sched_getaffinity(0))} CPUs; rings {geometry.slots} x {geometry.slot_size} B; "
        f"{args.mbytes} MB per transfer, {args.rtt} round trips of {MSG} B"
    )
    runs: list[Callable[[], Row]] = [
        lambda: bench_socketpair(total, args.rtt),
        lambda: bench_session(total, args.rtt, always=False),
        lambda: bench_session(total, args.rtt, always=True),
        lambda: bench_bare_ring(total, args.rtt),
    ]
    header = f"{'path':<22} {'app->stack':>11} {'stack->app':>11} {'RTT p50':>9} {'RTT p99':>9}"
    print(header + f" {'bells/RTT':>10}")
    print(f"{'':<22} {'MB/s':>11} {'MB/s':>11} {'µs':>9} {'µs':>9}")
    for bench in runs:
        row = bench()
        bells = f"{row.bells:10.2f}" if row.bells >= 0 else f"{'-':>10}"
        print(
            f"{row.name:<22} {row.up:11.0f} {row.down:11.0f} {row.rtt_p50:9.1f} "
            f"{row.rtt_p99:9.1f} {bells}",
            flush=True,
        )


if __name__ == "__main__":
    main()

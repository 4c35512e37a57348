"""The confined extension's loop: frames from the rings of two NICs through the forwarder.

Runs in the extension domain, which holds, per NIC, the kernel's PACKET_MMAP rings (mapped, no
socket), an epoll fd that reports the packet socket readable, and a send-only io_uring over the
socket (`guest.stack.factored.uring`); the device over them is the factored stack's
`SharedRingDevice`. One wakeup drains every ready RX slot of every ring poll names, batch by
batch; each batch goes through `Forwarder.handle`, which rewrites forwarded frames in place in
their RX slots; what it returns is written into the egress NIC's TX ring, and one io_uring
submission per egress per batch makes the kernel transmit the lot. No system call per frame:
`poll` once per wakeup, `io_uring_enter` once per transmitted batch (`clock_gettime` is the
vDSO's).

With `vnet` (the supervisor's `--offloads`), the rings carry a virtio_net_hdr in front of
every frame and the engine's `handle_vnet` takes them: GRO's super-frames go through whole.

Copies: a frame forwarded in place is copied once, from its RX slot into a TX slot (PACKET_MMAP
keeps the two rings apart); the engine itself copies nothing on that path. Frames the engine
builds (ARP, ICMP errors, fragments) or holds for ARP are its own buffers, counted apart.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from guest.stack.device.ring import RingDevice
from guest.stack.factored import sandbox
from guest.stack.forward import Forwarder

#: RX slots taken per `recv_batch`, and so frames per transmitted batch at most.
BATCH = 256
#: How soon TX slots the kernel did not take yet (socket buffer full) are asked for again.
RETRY_MS = 1
#: Longest sleep: a stop request is seen within this (signals do not end a poll, PEP 475).
IDLE_MS = 200
#: How often the counters go to the supervisor (so a killed extension loses at most this).
REPORT_EVERY_S = 0.25

#: What the loop needs once confined, and nothing more: the CPython runtime (memory, signals,
#: futexes, its clock, exit), `poll` over the epoll fds it holds, `io_uring_enter` on its
#: send-only rings, `write` for its status pipe. No socket calls, no open, no ioctl, no fork,
#: no ptrace, no io_uring_setup/register; `mmap` only at offset 0 (never the io_uring's
#: submission entries) and `mprotect` never granting write.
EXTENSION: sandbox.Policy = sandbox.Policy(
    "extension",
    frozenset(
        {
            "read", "write", "close", "fstat", "newfstatat", "lseek", "munmap", "mremap",
            "madvise", "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
            "futex", "getpid", "gettid", "clock_gettime", "clock_nanosleep", "poll", "ppoll",
            "epoll_wait", "epoll_pwait", "io_uring_enter", "getrandom", "exit", "exit_group",
            "restart_syscall", "rseq", "set_robust_list", "sched_yield",
        }
    ),
    (sandbox.NO_WRITE_GRANT, sandbox.MAP_FROM_START),
)  # fmt: skip


@dataclass(slots=True)
class LoopStats:
    frames_in: int = 0  # frames read from the RX rings
    frames_out: int = 0  # frames written into the TX rings
    rx_batches: int = 0  # non-empty reads of an RX ring
    tx_batches: int = 0  # batches written into a TX ring, each ended by one transmit request
    poll_wakeups: int = 0  # poll() calls (the loop's only sleep)
    tx_kicks: int = 0  # transmit requests (io_uring submissions of one send)
    tx_no_room: int = 0  # ... the kernel answered with "no room" (slots asked for again)
    tx_errors: int = 0
    tx_ring_full: int = 0  # frames dropped: the egress TX ring had no free slot
    in_place: int = 0  # frames out that are a received frame rewritten in its RX slot
    engine_buffers: int = 0  # frames out in a buffer the engine made (ARP, ICMP, held, ...)
    slot_copies: int = 0  # frames copied from an RX slot (or engine buffer) into a TX slot


class ExtensionLoop:
    """Forwards between `devices` (NIC name -> ring device) with `forwarder` until `stop()`."""

    def __init__(
        self,
        forwarder: Forwarder,
        devices: dict[str, RingDevice],
        report: Callable[[dict], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        vnet: bool = False,
    ) -> None:
        self.fwd = forwarder
        self._handle = forwarder.handle_vnet if vnet else forwarder.handle
        self._poll = forwarder.poll_vnet if vnet else forwarder.poll
        self.devices = devices
        self.stats = LoopStats()
        self._report = report
        self._clock = clock
        self._stop = False

    def stop(self, *_args: object) -> None:
        self._stop = True

    def counters(self) -> dict[str, int]:
        """The engine's counters and the loop's, one flat dict (kicks read from the rings)."""
        st = self.stats
        st.tx_kicks = st.tx_no_room = st.tx_errors = 0
        for dev in self.devices.values():
            tx = getattr(getattr(dev, "transmit", None), "stats", None)
            if tx is not None:
                st.tx_kicks += tx.submits
                st.tx_no_room += tx.no_room
                st.tx_errors += tx.errors
        return {**self.fwd.stats(), **asdict(st)}

    def run(self) -> None:
        poller = select.poll()
        by_fd = {}
        for name, dev in self.devices.items():
            poller.register(dev.fileno(), select.POLLIN)
            by_fd[dev.fileno()] = (name, dev)
        # The first pass reads every ring; after it, those poll says are ready (a drain reads
        # its ring empty, so a ring poll did not name has nothing: reading it costs a pass).
        ready = list(by_fd.values())
        clock = self._clock
        st = self.stats
        next_report = clock() + REPORT_EVERY_S
        while not self._stop:
            for name, dev in ready:
                self._drain(name, dev)
            now = clock()
            due = self.fwd.next_timeout()
            if due is not None and due <= now:
                self._send(self._poll(now))
                due = self.fwd.next_timeout()
            waiting = False
            for dev in self.devices.values():
                if dev.tx_pending:
                    dev.flush()
                    waiting = waiting or bool(dev.tx_pending)
            if self._report is not None and now >= next_report:
                self._report(self.counters())
                next_report = now + REPORT_EVERY_S
            timeout = RETRY_MS if waiting else IDLE_MS
            if due is not None:
                timeout = max(0, min(timeout, math.ceil((due - now) * 1000)))
            st.poll_wakeups += 1
            ready = [by_fd[fd] for fd, _ in poller.poll(timeout)]

    def _drain(self, name: str, dev: RingDevice) -> None:
        """Every ready RX slot of `dev`, a batch at a time; the last (empty) read gives the
        slots back to the kernel, so the socket does not poll readable on them again."""
        handle = self._handle
        clock = self._clock
        st = self.stats
        while True:
            frames = dev.recv_batch(BATCH)
            if not frames:
                return
            st.frames_in += len(frames)
            st.rx_batches += 1
            now = clock()
            out: list[tuple[str, bytearray | memoryview]] = []
            for frame in frames:
                out += handle(name, frame, now)
            if out:
                self._send(out)

    def _send(self, out: list[tuple[str, bytearray | memoryview]]) -> None:
        """Group by egress NIC, one TX batch (and one transmit request) per NIC."""
        by_dev: dict[str, list[bytearray | memoryview]] = {}
        for egress, frame in out:
            frames = by_dev.get(egress)
            if frames is None:
                by_dev[egress] = [frame]
            else:
                frames.append(frame)
        st = self.stats
        for egress, frames in by_dev.items():
            dev = self.devices[egress]
            try:
                queued = dev.send_batch(frames)
            except ValueError:  # a frame the TX slot cannot hold (never from the engine)
                queued = 0
            st.tx_batches += 1
            st.frames_out += queued
            st.slot_copies += queued
            st.tx_ring_full += len(frames) - queued
            views = sum(1 for f in frames[:queued] if type(f) is memoryview)
            st.in_place += views
            st.engine_buffers += queued - views


def per_frame(stats: dict[str, int]) -> dict[str, float]:
    """Costs per frame from summed counters: system calls (poll wakeups and transmit requests)
    per received frame, copies per transmitted frame, frames per batch."""

    def ratio(a: float, b: float) -> float:
        return round(a / b, 4) if b else 0.0

    frames_in, frames_out = stats.get("frames_in", 0), stats.get("frames_out", 0)
    return {
        "syscalls_per_frame": ratio(
            stats.get("poll_wakeups", 0) + stats.get("tx_kicks", 0), frames_in
        ),
        "poll_wakeups_per_frame": ratio(stats.get("poll_wakeups", 0), frames_in),
        "tx_kicks_per_frame": ratio(stats.get("tx_kicks", 0), frames_out),
        "engine_copies_per_frame": ratio(stats.get("engine_buffers", 0), frames_out),
        "slot_copies_per_frame": ratio(stats.get("slot_copies", 0), frames_out),
        "frames_per_rx_batch": ratio(frames_in, stats.get("rx_batches", 0)),
        "frames_per_tx_batch": ratio(frames_out, stats.get("tx_batches", 0)),
    }

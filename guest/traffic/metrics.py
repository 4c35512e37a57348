"""Pure measurement helpers: payload pattern, percentiles and CPU accounting."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Prime length: a cyclic stream of this period never lines up with power-of-two write or segment
# sizes, so a reordered, dropped or duplicated segment always changes the sha256.
PATTERN_BLOCK_LEN = 1_000_003


class Pattern:
    """The deterministic payload: ``Random(seed).randbytes(block_len)`` repeated forever.

    Stream byte ``i`` is ``block[i % block_len]``.  The block is stored with its first
    ``max_window`` bytes appended, so any window up to that size is one zero-copy slice even
    when it wraps around the end of the block.
    """

    def __init__(self, seed: int, max_window: int, block_len: int = PATTERN_BLOCK_LEN) -> None:
        if block_len <= 0 or max_window <= 0:
            raise ValueError("block_len and max_window must be positive")
        block = random.Random(seed).randbytes(block_len)
        reps = -(-(block_len + max_window) // block_len)  # ceil
        self.block_len = block_len
        self.max_window = max_window
        self._view = memoryview((block * reps)[: block_len + max_window])

    def window(self, stream_offset: int, size: int) -> memoryview:
        """Bytes ``[stream_offset, stream_offset + size)`` of the infinite stream."""
        if not 0 <= size <= self.max_window:
            raise ValueError(f"window size {size} outside 0..{self.max_window}")
        start = stream_offset % self.block_len
        return self._view[start : start + size]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Percentile by linear interpolation between closest ranks.

    This is Hyndman-Fan type 7 (numpy's default, Excel PERCENTILE.INC): rank ``h = (n-1)*q/100``
    and interpolate between ``floor(h)`` and ``ceil(h)``.  Chosen because it is the convention
    most analysis tools use, so figures compare directly.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    h = (len(sorted_values) - 1) * q / 100
    lo = int(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (h - lo)


def latency_summary_us(latencies_ns: Sequence[int]) -> dict[str, float | None]:
    """p50/p90/p99/min/max/mean in microseconds (all null when nothing was measured)."""
    keys = ("p50", "p90", "p99", "min", "max", "mean")
    if not latencies_ns:
        return dict.fromkeys(keys)
    us = sorted(v / 1000 for v in latencies_ns)
    return {
        "p50": percentile(us, 50),
        "p90": percentile(us, 90),
        "p99": percentile(us, 99),
        "min": us[0],
        "max": us[-1],
        "mean": sum(us) / len(us),
    }


def parse_proc_stat(text: str) -> tuple[int, int] | None:
    """(busy, total) jiffies from the aggregate ``cpu`` line of /proc/stat.

    total = user+nice+system+idle+iowait+irq+softirq+steal (guest time is already inside
    user/nice, so adding it would double count); busy = total - idle - iowait, because waiting
    for I/O is not work done by the CPU.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                values = [int(f) for f in fields[1:9]]
            except ValueError:
                return None
            if len(values) < 5:
                return None
            total = sum(values)
            return total - values[3] - values[4], total
    return None


#: Open /proc/stat fds by path, kept for the process's life: a confined application domain
#: (`appdomain`) may not open files, so the meter opens its file before confinement and
#: rereads it with pread (a seq_file read at offset 0 regenerates it).
_STAT_FDS: dict[str, int] = {}


def read_proc_stat(path: str = "/proc/stat") -> tuple[int, int] | None:
    try:
        fd = _STAT_FDS.get(path)
        if fd is None:
            fd = _STAT_FDS[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return parse_proc_stat(os.pread(fd, 1 << 16, 0).decode("ascii"))
    except OSError:
        return None


@dataclass
class Meter:
    """Wall clock, process CPU and system CPU sampled together, so the figures share a window.

    Process CPU (user+sys) comes from ``time.process_time()`` (CLOCK_PROCESS_CPUTIME_ID, ns
    resolution) rather than ``os.times()``, whose 10 ms ticks make short runs meaningless.
    """

    wall: float
    proc_cpu: float
    stat: tuple[int, int] | None

    @classmethod
    def start(cls) -> Meter:
        return cls(time.perf_counter(), time.process_time(), read_proc_stat())

    def stop(self) -> dict[str, Any]:
        proc_cpu = time.process_time()
        wall = time.perf_counter()
        stat = read_proc_stat()
        seconds = wall - self.wall
        cpu_system = None
        # A window shorter than one jiffy (usually 10 ms) has no /proc/stat delta: null, not 0.
        if self.stat is not None and stat is not None and stat[1] > self.stat[1]:
            cpu_system = (stat[0] - self.stat[0]) / (stat[1] - self.stat[1])
        return {
            "seconds": seconds,
            "cpu_process": (proc_cpu - self.proc_cpu) / seconds if seconds > 0 else None,
            "cpu_system": cpu_system,
            "ncpus": os.cpu_count(),
        }


def rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0

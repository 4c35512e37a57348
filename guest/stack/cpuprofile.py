"""Where a stack process's CPU goes, by layer: the stacks' `--profile`.

A user-level stack's cost is spread thin over many small functions in several layers (wire
codecs, TCP, NetStack, the session boundary, the device, the loop), so a per-function profile
says little about which layer to work on. This runs the loop under cProfile and folds its
figures into those layers by the module each function lives in. Time in C functions and the
standard library (`len`, `struct`, `selectors`, ...) goes to the layers that called them, in
proportion to their calls, except the system calls, which are a layer of their own, and the
wait for work (`poll`), which is not CPU and is kept apart.

cProfile roughly doubles the cost of a Python call, and small functions pay most: read the
shares, not the absolute figures, and compare profiled runs only with profiled runs.
"""

from __future__ import annotations

import cProfile
import pstats
from collections import Counter

#: Layers, by the module path below guest/stack/ (first match wins).
LAYERS: tuple[tuple[str, str], ...] = (
    ("wire/", "wire"),
    ("tcp/", "tcp"),
    ("core/", "core"),
    ("session/", "session"),
    ("device/", "device"),
    ("factored/", "factored"),
    ("forward/", "forward"),
    ("", "loop"),  # loop.py, backend.py, nic.py, offloads.py, the wirings
)
#: C functions that enter the kernel: their time is the kernel's work for the stack.
SYSCALLS = frozenset(
    (
        "send",
        "sendto",
        "sendmsg",
        "recv",
        "recv_into",
        "recvfrom",
        "recvmsg",
        "eventfd_write",
        "eventfd_read",
        "write",
        "read",
        "io_uring",
        "setsockopt",
        "getsockopt",
    )
)
Key = tuple[str, int, str]


class LayerProfile:
    """cProfile around a stretch of the loop; `by_layer()` folds it into layers."""

    def __init__(self) -> None:
        self._prof = cProfile.Profile()

    def start(self) -> None:
        self._prof.enable()

    def stop(self) -> None:
        self._prof.disable()

    def by_layer(self) -> dict[str, float | dict[str, float]]:
        """Seconds per layer, the system calls, the waiting, and their total (no waiting)."""
        stats = pstats.Stats(self._prof).stats  # type: ignore[attr-defined]
        return fold(stats)


def layer_of(key: Key) -> str | None:
    """The layer of a function of ours; "syscalls" or "wait" for those C functions; None for
    the rest (C helpers and the standard library), which their callers are charged for."""
    filename, _line, name = key
    if filename == "~":
        if name.startswith("<method '"):  # <method 'send' of '_socket.socket' objects>
            called = name.split("'")[1]
        elif name.startswith("<built-in method "):  # <built-in method posix.eventfd_write>
            called = name[len("<built-in method ") : -1].rsplit(".", 1)[-1]
        else:
            called = name
        if called == "poll" and "of 'select." in name:
            return "wait"
        return "syscalls" if called in SYSCALLS else None
    at = filename.find("/guest/stack/")
    if at < 0:
        return None
    rest = filename[at + len("/guest/stack/") :]
    for prefix, layer in LAYERS:
        if rest.startswith(prefix):
            return layer
    return None


def fold(stats: dict) -> dict[str, float | dict[str, float]]:
    """Fold pstats' raw entries into layers (see the module docstring)."""
    shares: dict[Key, Counter[str]] = {}

    def charged(key: Key, depth: int = 0) -> Counter[str]:
        """How `key`'s own time splits over layers (weights summing to 1)."""
        if key in shares:
            return shares[key]
        layer = layer_of(key)
        if layer is not None:
            out: Counter[str] = Counter({layer: 1.0})
        else:
            out = Counter()
            callers = stats[key][4] if key in stats else {}
            calls = sum(c[1] for c in callers.values()) or 0
            if calls and depth < 20:
                for caller, figures in callers.items():
                    for name, weight in charged(caller, depth + 1).items():
                        out[name] += weight * figures[1] / calls
            if not out:
                out["other"] = 1.0
        shares[key] = out
        return out

    seconds: Counter[str] = Counter()
    for key, (_cc, _nc, tottime, _ct, _callers) in stats.items():
        for layer, weight in charged(key).items():
            seconds[layer] += tottime * weight
    wait = seconds.pop("wait", 0.0)
    layers = {name: round(value, 6) for name, value in seconds.most_common()}
    return {"layers": layers, "cpu_s": round(sum(layers.values()), 6), "wait_s": round(wait, 6)}

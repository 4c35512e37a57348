"""The fault-injection knob: off by default; on, every received frame costs the time asked
(spent spinning, as a slower receive path would spend it) and is still delivered intact."""

from __future__ import annotations

import argparse
import time

from guest.stack.loop import slowed
from guest.stack.options import add_stack_arguments
from guest.traffic.userstack import _injected


def test_a_slowed_delivery_spins_at_least_the_time_asked_and_delivers_the_frame() -> None:
    got: list[tuple] = []
    deliver = slowed(lambda frame, now, ok: got.append((bytes(frame), now, ok)), 0.002)
    start = time.perf_counter()
    for i in range(5):
        deliver(memoryview(bytes([i]) * 60), float(i), True)
    assert time.perf_counter() - start >= 5 * 0.002
    assert got == [(bytes([i]) * 60, float(i), True) for i in range(5)]


def test_the_knob_is_off_unless_asked() -> None:
    ap = argparse.ArgumentParser()
    add_stack_arguments(ap)
    args = ap.parse_args(["--iface", "eth1", "--addr", "198.18.1.1/24"])
    assert args.inject_rx_us == 0.0
    assert _injected(argparse.Namespace()) == 0.0
    assert _injected(argparse.Namespace(stack_inject_rx_us=40.0)) == 40.0

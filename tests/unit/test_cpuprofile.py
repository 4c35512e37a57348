"""The stacks' CPU profile by layer (guest/stack/cpuprofile.py), on real stack code."""

from __future__ import annotations

import select

from guest.bench.core import bench_rr
from guest.stack.cpuprofile import LayerProfile, layer_of


def test_layers_by_module_and_c_functions() -> None:
    assert layer_of(("/x/guest/stack/tcp/connection.py", 1, "poll")) == "tcp"
    assert layer_of(("/x/guest/stack/wire/tcp.py", 1, "parse")) == "wire"
    assert layer_of(("/x/guest/stack/loop.py", 1, "run")) == "loop"
    assert layer_of(("/x/guest/stack/factored/shmdev.py", 1, "f")) == "factored"
    assert layer_of(("~", 0, "<method 'send' of '_socket.socket' objects>")) == "syscalls"
    assert layer_of(("~", 0, "<built-in method posix.eventfd_write>")) == "syscalls"
    assert layer_of(("~", 0, "<method 'poll' of 'select.poll' objects>")) == "wait"
    assert layer_of(("~", 0, "<built-in method builtins.len>")) is None  # its caller pays
    assert layer_of(("/usr/lib/python3.11/enum.py", 1, "__hash__")) is None


def test_a_profiled_exchange_is_charged_to_the_stack_layers_and_waiting_kept_apart() -> None:
    prof = LayerProfile()
    poller = select.poll()
    prof.start()
    bench_rr(300)  # two NetStacks exchanging 64-byte requests and answers
    poller.poll(30)  # 30 ms of waiting, which is not CPU
    prof.stop()
    figures = prof.by_layer()
    layers = figures["layers"]
    assert isinstance(layers, dict)
    assert {"wire", "tcp", "core"} <= set(layers)
    assert layers["tcp"] > layers.get("other", 0.0)  # C helpers went to their callers
    assert figures["wait_s"] >= 0.025
    assert abs(figures["cpu_s"] - sum(layers.values())) < 1e-3

"""The forwarding engine's per-frame bench (guest.bench.forward): it forwards every frame it
times, and its figures and profile exist. What they are is for the bench to print."""

from __future__ import annotations

import json

import pytest

from guest.bench import forward


def test_every_timed_frame_is_forwarded_and_the_figures_exist(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert forward.main(["--frames", "500", "--size", "600", "--profile"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["frames"], out["size"]) == (500, 600)
    assert out["engine_us_per_frame"] > 0 and out["floor_us_per_frame"] > 0
    functions = [row["function"] for row in out["profile"]]
    assert any(f.startswith("engine.py:") for f in functions), functions


def test_the_bench_frame_is_rewritten_as_a_router_would() -> None:
    fw = forward.engine()
    frame = forward.tcp_frame(100)
    forward.resolved(fw, frame)
    ((iface, out),) = fw.handle("in", bytearray(frame), 0.0)
    assert iface == "out"
    assert bytes(out[0:6]) == forward.SERVER_MAC and out[14 + 8] == 63  # next hop, TTL - 1


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(SystemExit):
        forward.main(["--size", "20"])

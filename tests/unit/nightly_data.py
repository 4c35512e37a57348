"""Result sets for the nightly's unit tests, shaped as `invoke bench` saves them: per-round
figures drawn from seeded noise around chosen medians, so a test says what it compares."""

from __future__ import annotations

import random


def meta(lab: str = "nightly", accel: str = "tcg", commit: str = "c0ffee", **host) -> dict:
    return {
        "tool": "stackbed",
        "created": "2026-12-06T02:30:00Z",
        "git_commit": commit,
        "git_dirty": False,
        "accel": accel,
        "host": {
            "kernel": "6.1.0-test",
            "machine": "x86_64",
            "cpu_model": "Test CPU",
            "qemu": "QEMU emulator version 7.2.0",
            **host,
        },
        "image": {"name": "default", "digest": "abc123"},
        "placement": "a=1 m=1 b=1 unpinned",
        "guest_kernel": "6.1.0-guest",
        "lab": lab,
        "rounds": 5,
        "boot_seconds": {"a": 10.0},
        "config": {},
    }


def record(
    name: str,
    kind: str,
    path: str,
    key: str,
    values: list[float],
    baseline: str | None = None,
    **more: float,
) -> dict:
    runs = [{key: v, "round": r, **more} for r, v in enumerate(values, start=1)]
    return {
        "experiment": name,
        "type": kind,
        "path": path,
        "stack": None,
        "client": "a",
        "server": "m",
        "link": "a-m",
        "route": {"nodes": ["a", "m"], "links": ["a-m"]},
        "forward": {"mode": "kernel", "middles": {}},
        "impairments": {},
        "duration_s": 5,
        "baseline": baseline,
        "runs": runs,
        "summary": {key: sorted(values)[len(values) // 2]} if values else None,
        "errors": [],
    }


def noisy(median: float, spread: float, n: int, rng: random.Random) -> list[float]:
    """`n` figures around `median`, each off by up to ±`spread` (a fraction)."""
    return [median * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def result_set(
    seed: int,
    rounds: int = 5,
    mono_factor: float = 1.0,
    spread: float = 0.03,
    drift: float = 1.0,
    user_drift: list[float] | None = None,
    **meta_fields,
) -> dict:
    """kernel, mono and factored streams and rrs. `drift` scales every figure of the night
    (the host got slower); `user_drift` scales the user-level paths' figures round by round
    (the part of the host's swing that the ratio to the kernel does not cancel; two arms of
    one night share it); `mono_factor` slows mono's throughput alone (and factored's, which
    runs the same code); `spread` is each round's noise."""
    rng = random.Random(seed)
    swing = user_drift or [1.0] * rounds
    kernel = noisy(400 * drift, spread, rounds, rng)
    mono = [
        k * 0.2 * mono_factor * s * (1 + rng.uniform(-spread, spread))
        for k, s in zip(kernel, swing, strict=True)
    ]
    factored = [m * 0.95 * (1 + rng.uniform(-spread, spread)) for m in mono]
    k_rr = noisy(1500 / drift, spread, rounds, rng)
    m_rr = [
        k * 12 / s * (1 + rng.uniform(-spread, spread)) for k, s in zip(k_rr, swing, strict=True)
    ]
    return {
        "metadata": meta(**meta_fields),
        "results": [
            record("kernel-stream", "stream", "kernel", "mbit_per_s", kernel),
            record("mono-stream", "stream", "mono", "mbit_per_s", mono, "kernel-stream"),
            record("factored-stream", "stream", "factored", "mbit_per_s", factored, "mono-stream"),
            record("kernel-rr", "rr", "kernel", "p50_us", k_rr, p99_us=3000.0),
            record("mono-rr", "rr", "mono", "p50_us", m_rr, "kernel-rr", p99_us=30000.0),
        ],
    }

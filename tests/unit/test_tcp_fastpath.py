"""Differential tests of header prediction (`guest/stack/tcp/fastpath.py`) against the full path.

The full path is the specification. Two checks, over seeded lossy, reordering, duplicating
transfers in both directions and over random configurations:

- **shadowed, segment by segment**: every time the fast path takes a segment, a copy of the
  connection made just before takes the same segment through the full path, and the two
  connections must then be equal in every field (sequence variables, buffers, timers,
  congestion and RACK state, counters, pending events and control segments); every `poll`
  is shadowed the same way (its fast side skips the output machinery when nothing waits),
  segments out included;
- **end to end**: the same seeded transfer with the fast path on and off must put the very
  same segments on the wire at the very same times, and end with the same counters.

The long fuzz bench's corpus (valid, mutated and hostile frames aimed at live connections)
goes through the shadow as well, and a short fuzz run reports the same with and without the
fast path. A last test makes sure the comparison can fail: a fast path with one effect left out is
caught by the shadow.
"""

from __future__ import annotations

import copy
import enum
import random
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guest.stack.tcp.connection as connection_module
from guest.bench.core import bench_rr
from guest.bench.fuzz.bench import run_fuzz
from guest.stack.tcp import TcpConfig
from guest.stack.tcp.connection import TcpConnection
from guest.stack.tcp.fastpath import predicted
from guest.stack.wire.tcp import TcpRepr
from guest.testing.tcp_sim import LinkConfig, Simulator, TransferResult, run_transfer


def state(obj: Any, _seen: dict[int, int] | None = None) -> Any:
    """Everything an object holds, as nested plain values (for comparing two connections).

    Objects of our own packages are walked field by field (slots and dict); containers
    element by element; buffers as their bytes. Shared objects are walked once and later
    referred to by the order they were met, so aliasing must match too.
    """
    seen = {} if _seen is None else _seen
    if obj is None or isinstance(obj, bool | int | float | str | enum.Enum):
        return obj
    if isinstance(obj, bytes | bytearray | memoryview):
        return ("bytes", bytes(obj))
    if id(obj) in seen:
        return ("seen", seen[id(obj)])
    seen[id(obj)] = len(seen)
    if isinstance(obj, list | tuple):
        return (type(obj).__name__, [state(x, seen) for x in obj])
    if isinstance(obj, dict):
        return ("dict", [(state(k, seen), state(v, seen)) for k, v in obj.items()])
    if isinstance(obj, set | frozenset):
        return ("set", sorted(repr(state(x, seen)) for x in obj))
    if is_dataclass(obj):
        names = [f.name for f in fields(obj)]
    else:
        names = list(getattr(obj, "__dict__", {}))
        for klass in type(obj).__mro__:
            names += [n for n in getattr(klass, "__slots__", ()) if n not in names]
    module = type(obj).__module__
    if not module.startswith("guest.") and not names:
        return ("opaque", type(obj).__name__, repr(obj))
    return (
        type(obj).__name__,
        [(n, state(getattr(obj, n), seen)) for n in sorted(names) if hasattr(obj, n)],
    )


def connection_state(conn: TcpConnection) -> Any:
    """A connection's state, less the switch that says which path it takes."""
    snap = dict(state(conn)[1])
    snap.pop("_fast_path")
    snap["config"] = state(replace(conn.config, fast_path=True))
    return snap


class Shadow:
    """Wraps the fast path: each segment it takes is also run on a copy through the full path,
    and the two connections are compared."""

    def __init__(self, fast: Callable[[TcpConnection, TcpRepr, float], bool] = predicted):
        self.fast = fast
        self.taken = 0
        self.declined = 0

    def __call__(self, conn: TcpConnection, seg: TcpRepr, now: float) -> bool:
        twin = copy.deepcopy(conn)
        if not self.fast(conn, seg, now):
            self.declined += 1
            assert connection_state(conn) == connection_state(twin), "declined, yet changed"
            return False
        self.taken += 1
        twin._fast_path = False
        twin._arrive(seg, now)  # what receive_segment does with it past its counter
        got, want = connection_state(conn), connection_state(twin)
        if got != want:
            diff = [k for k in want if got.get(k) != want[k]]
            raise AssertionError(f"fast path differs from the full path in {diff} on {seg}")
        return True


class PollShadow:
    """Wraps `TcpConnection.poll`: a copy without the fast path polls too, and the segments
    out and the two connections must be equal (`_idle`, the fast path's side of poll)."""

    def __init__(self) -> None:
        self.polls = 0
        self.idle = 0
        self._poll = TcpConnection.poll
        self._idle = TcpConnection._idle

    def __call__(self, conn: TcpConnection, now: float) -> list[TcpRepr]:
        twin = copy.deepcopy(conn)
        twin._fast_path = False
        before = self.idle
        out = self._poll(conn, now)
        want = self._poll(twin, now)
        self.polls += 1
        assert [state(seg) for seg in out] == [state(seg) for seg in want], "segments differ"
        got_state, want_state = connection_state(conn), connection_state(twin)
        if got_state != want_state:
            diff = [k for k in want_state if got_state.get(k) != want_state[k]]
            raise AssertionError(f"poll: fast path differs in {diff} (idle: {self.idle > before})")
        return out

    def counted_idle(self, conn: TcpConnection, now: float) -> bool:
        idle = self._idle(conn, now)
        self.idle += idle
        return idle


@pytest.fixture
def shadow(monkeypatch: pytest.MonkeyPatch) -> Shadow:
    s = Shadow()
    monkeypatch.setattr(connection_module, "predicted", s)
    polls = PollShadow()
    # Functions, not the object: only a function on a class becomes a bound method.
    monkeypatch.setattr(TcpConnection, "poll", lambda conn, now: polls(conn, now))
    monkeypatch.setattr(TcpConnection, "_idle", lambda conn, now: polls.counted_idle(conn, now))
    s.polls = polls  # type: ignore[attr-defined]
    return s


def traced_transfer(config: TcpConfig, **kw: Any) -> tuple[TransferResult, list[tuple]]:
    """`run_transfer`, recording every segment put on either link (time, direction, segment)."""
    trace: list[tuple] = []
    send = Simulator.send

    def record(sim: Simulator, src: Any, dst: Any, seg: TcpRepr, now: float) -> None:
        trace.append((now, src, dst, state(seg)))
        send(sim, src, dst, seg, now)

    mp = pytest.MonkeyPatch()
    mp.setattr(Simulator, "send", record)
    try:
        result = run_transfer(client_config=config, server_config=config, **kw)
    finally:
        mp.undo()
    return result, trace


LINKS = {
    "clean": LinkConfig(delay=0.002),
    "lossy": LinkConfig(delay=0.005, loss=0.03),
    "reordering": LinkConfig(delay=0.003, reorder=0.1, duplicate=0.02),
    "harsh": LinkConfig(delay=0.01, loss=0.08, reorder=0.05, duplicate=0.05, corrupt=0.01),
    "bottleneck": LinkConfig(delay=0.01, bandwidth=20e6, queue_bytes=30_000),
}

#: The simulator's applications close as soon as the send buffer took all their data, and a
#: connection that has sent its FIN is no longer ESTABLISHED (the fast path's only state): send
#: buffers well below the transfers keep the connections established for most of the run.
_SND = 24_000
CONFIGS = {
    "default": TcpConfig(send_buffer_size=_SND),
    "cubic": TcpConfig(cc="cubic", send_buffer_size=_SND),
    "no-timestamps": TcpConfig(timestamps=False, send_buffer_size=_SND),
    "no-sack": TcpConfig(sack=False, send_buffer_size=_SND),
    "small-window": TcpConfig(recv_buffer_size=6000, send_buffer_size=9000),
    "ack-every-segment": TcpConfig(delayed_ack=False, mss=536, send_buffer_size=_SND),
}


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("link", list(LINKS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_shadowed_segment_by_segment(shadow: Shadow, link: str, config: str) -> None:
    """Both directions at once (data segments carrying ACKs of the other direction's data)."""
    up, down = _data(120_000, 1), _data(80_000, 2)
    r = run_transfer(
        up,
        down,
        forward=LINKS[link],
        client_config=CONFIGS[config],
        server_config=CONFIGS[config],
        client_write=3000,
        seed=7,
    )
    assert r.completed
    assert r.server_received == up and r.client_received == down
    assert shadow.taken > 0  # the fast path was exercised, not merely declined
    assert shadow.declined > 0  # and the full path still takes the unusual segments
    assert shadow.polls.polls > 0  # type: ignore[attr-defined]
    if link == "clean":
        assert shadow.taken > shadow.declined


def test_request_response_is_predicted(shadow: Shadow) -> None:
    """64-byte requests and answers between two NetStacks, as the traffic tool's rr sends
    them: each side's data acknowledges the other's, and between them nothing waits to be
    sent, so the fast path carries almost every segment and the polls that find nothing to
    send."""
    bench_rr(300)
    assert shadow.taken > 10 * shadow.declined
    polls = shadow.polls  # type: ignore[attr-defined]
    assert polls.idle >= 300  # at least the poll after each answer arrives


@pytest.mark.parametrize("link", list(LINKS))
@pytest.mark.parametrize("config", ["default", "no-sack", "small-window"])
def test_same_segments_on_the_wire(link: str, config: str) -> None:
    up, down = _data(150_000, 5), _data(40_000, 6)
    kw = {"forward": LINKS[link], "client_write": 7000, "seed": 11}
    fast, fast_trace = traced_transfer(CONFIGS[config], client_data=up, server_data=down, **kw)
    full_cfg = replace(CONFIGS[config], fast_path=False)
    full, full_trace = traced_transfer(full_cfg, client_data=up, server_data=down, **kw)
    assert fast.completed and full.completed
    assert fast.server_received == full.server_received == up
    assert len(fast_trace) == len(full_trace)
    assert fast_trace == full_trace
    assert fast.client_stats == full.client_stats
    assert fast.server_stats == full.server_stats


links = st.builds(
    LinkConfig,
    delay=st.sampled_from([0.0, 0.001, 0.02]),
    bandwidth=st.sampled_from([None, 10e6]),
    queue_bytes=st.sampled_from([None, 20_000]),
    loss=st.sampled_from([0.0, 0.02, 0.1]),
    duplicate=st.sampled_from([0.0, 0.05]),
    reorder=st.sampled_from([0.0, 0.1]),
)
configs = st.builds(
    TcpConfig,
    mss=st.sampled_from([100, 1460]),
    recv_buffer_size=st.sampled_from([3000, 200_000]),
    send_buffer_size=st.sampled_from([5000, 20_000]),
    timestamps=st.booleans(),
    sack=st.booleans(),
    delayed_ack=st.booleans(),
    rack=st.booleans(),
    prr=st.booleans(),
    cc=st.sampled_from(["newreno", "cubic"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    link=links,
    config=configs,
    seed=st.integers(0, 2**16),
    up=st.integers(0, 60_000),
    down=st.integers(0, 20_000),
)
def test_shadowed_random(link: LinkConfig, config: TcpConfig, seed: int, up: int, down: int):
    s = Shadow()
    mp = pytest.MonkeyPatch()
    mp.setattr(connection_module, "predicted", s)
    try:
        r = run_transfer(
            _data(up, seed),
            _data(down, seed + 1),
            forward=link,
            client_config=config,
            server_config=config,
            client_write=1000,
            seed=seed,
            time_limit=600,
        )
    finally:
        mp.undo()
    if r.completed:
        assert r.server_received == _data(up, seed)


def test_the_shadow_catches_a_wrong_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a fast path that forgets one effect (the time of the last acceptable
    segment, which keep-alive counts from) is caught at once."""

    def forgetful(conn: TcpConnection, seg: TcpRepr, now: float) -> bool:
        before = conn._last_rx_time
        took = predicted(conn, seg, now)
        conn._last_rx_time = before
        return took

    monkeypatch.setattr(connection_module, "predicted", Shadow(forgetful))
    with pytest.raises(AssertionError, match="_last_rx_time"):
        run_transfer(
            _data(50_000, 8),
            _data(50_000, 9),
            client_config=CONFIGS["default"],
            server_config=CONFIGS["default"],
            client_write=1000,
            seed=3,
        )


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_fuzz_corpus_shadowed(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The fuzz bench's frames, live transfers between them: a disagreement is an exception
    in the stack, which the bench reports as its failure."""
    s = Shadow()
    monkeypatch.setattr(connection_module, "predicted", s)
    report = run_fuzz(seed, frames=1200, verify=False)
    assert report["failure"] is None, report["failure"]
    assert s.taken > 0


def test_fuzz_run_same_without_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = run_fuzz(6, frames=800, verify=False)
    monkeypatch.setattr(connection_module, "predicted", lambda _conn, _seg, _now: False)
    full = run_fuzz(6, frames=800, verify=False)
    for key in ("frames", "cases", "kinds", "drops_top", "stack", "sim_time_s"):
        assert fast[key] == full[key], key

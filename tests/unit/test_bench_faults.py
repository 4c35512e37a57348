"""A guest lost mid-run: the run in progress and every later run that needs the lost node
get an error naming the node, what libvirt says of its domain and its console log; the runs
that do not need it go on, and a failed experiment is told apart from a broken testbed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from host import bench
from host.config import parse_lab
from host.experiments import EXPERIMENT_TYPES, BenchError
from host.lab import LabState, NodeState
from host.ssh import GuestLost
from tests.unit.fake_middles import FakeMiddle

LAB = """\
lab: nightly
nodes: [{name: a}, {name: m}, {name: b}]
links:
  - endpoints: [a, m]
  - endpoints: [m, b]
experiments:
  - {name: kernel-stream, type: stream, client: a, server: m, sweep: {msg_size: [1448, 65536]}}
  - {name: mono-stream, type: stream, path: mono, client: a, server: m, baseline: kernel-stream,
     sweep: {msg_size: [1448, 65536]}}
  - {name: kernel-stream-routed, type: stream, client: a, server: b}
  - {name: mono-stream-routed, type: stream, path: mono, client: a, server: b}
  - {name: kernel-stream-mtu, type: stream, client: a, server: m, sweep: {mtu: [1280, 9000]}}
"""
LOST = "node b lost: libvirt says domain sb-nightly-b is shut off: destroyed; console log: b.log"


def state_of(config) -> LabState:
    nodes = []
    for i, node in enumerate(config.nodes):
        mine = [link for link in config.links if node.name in link.endpoints]
        nics = [
            {"link": link.name, "name": f"eth{k + 1}", "address": str(link.address_of(node.name))}
            for k, link in enumerate(mine)
        ]
        nodes.append(
            NodeState(node.name, f"sb-nightly-{node.name}", 2200 + i, "x.log", 1, 512, nics)
        )
    return LabState(
        "nightly", "run", 1, "tcg", "default", "abc", "/tmp", "/tmp/key", 1, None, 0.0, nodes
    )


@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch):
    """The nightly lab with fake guests; stream runs fail as `outcome(target)` says."""
    config = parse_lab(LAB)
    guests = {n.name: FakeMiddle(n.name, "{}") for n in config.nodes}
    calls: list[str] = []

    def outcome(target) -> dict:
        calls.append(target.exp.name)
        if target.server.name == "b" and "routed" in target.exp.name:
            raise GuestLost("guest b: SSH session lost (SSH session not active)")
        if target.exp.name == "kernel-stream-mtu.mtu-9000":
            raise BenchError("sha256 of the sink differs from the source's")
        return {"mbit_per_s": 100.0}

    for name in ("stream",):
        monkeypatch.setitem(EXPERIMENT_TYPES, name, replace(EXPERIMENT_TYPES[name], run=outcome))
    return config, guests, calls


def test_a_lost_guest_stops_what_needs_it_and_nothing_else(lab) -> None:
    config, guests, calls = lab
    health_calls = []

    def health() -> dict[str, str]:
        health_calls.append(1)
        return {"b": LOST}

    streams = [e.name for e in config.experiments if e.type == "stream"]
    records = bench.run_experiments(
        config, state_of(config), guests.__getitem__, streams, lambda _m: None, 2, health=health
    )
    by_name = {r["experiment"]: r for r in records}
    routed = by_name["kernel-stream-routed"]["runs"]
    assert routed[0]["error_kind"] == "infrastructure"
    assert "SSH session lost" in routed[0]["error"] and LOST in routed[0]["error"]
    # every later run needing b is not tried, and says why
    for run in [routed[1], *by_name["mono-stream-routed"]["runs"]]:
        assert run == {"error": f"not run: {LOST}", "error_kind": "infrastructure"} | {
            "round": run["round"]
        }
    assert calls.count("kernel-stream-routed") == 1 and "mono-stream-routed" not in calls
    # the runs on a-m went on, both rounds
    ok = by_name["mono-stream.msg_size-1448"]
    assert [r["round"] for r in ok["runs"]] == [1, 2] and ok["summary"]["mbit_per_s"] == 100.0
    # an experiment that failed by itself is not the testbed's fault
    failed = by_name["kernel-stream-mtu.mtu-9000"]["runs"][0]
    assert failed["error_kind"] == "experiment" and "sha256" in failed["error"]


def test_the_mtu_override_is_set_on_both_ends_and_put_back(lab) -> None:
    config, guests, _calls = lab
    bench.run_experiments(
        config,
        state_of(config),
        guests.__getitem__,
        ["kernel-stream-mtu.mtu-1280"],
        lambda _m: None,
        1,
    )
    for node in ("a", "m"):
        sets = [c for c in guests[node].commands if c.startswith("ip link set")]
        assert sets == ["ip link set dev eth1 mtu 1280", "ip link set dev eth1 mtu 1500"]
    assert not [c for c in guests["b"].commands if c.startswith("ip link set")]


def test_rerun_rounds_extend_the_records(lab) -> None:
    config, guests, _calls = lab
    names = ["kernel-stream.msg_size-1448"]
    records = bench.run_experiments(
        config, state_of(config), guests.__getitem__, names, lambda _m: None, 2
    )
    more = bench.run_experiments(
        config, state_of(config), guests.__getitem__, names, lambda _m: None, 3, first_round=3
    )
    bench.extend(records, more)
    assert [r["round"] for r in records[0]["runs"]] == [1, 2, 3, 4, 5]
    assert records[0]["summary"]["mbit_per_s"] == 100.0


def test_the_fault_injection_knob_is_read_checked_and_passed_to_user_level_stacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse_lab(LAB)
    exp = next(e for e in config.experiments if e.path == "mono")
    state = state_of(config)
    assert "--stack-inject-rx-us" not in bench.path_args(exp, state, "a", "a-m")
    monkeypatch.setenv(bench.INJECT_ENV, "40")
    assert "--stack-inject-rx-us 40" in bench.path_args(exp, state, "a", "a-m")
    assert "--stack-cc newreno" in bench.path_args(exp, state, "a", "a-m")
    kernel = next(e for e in config.experiments if e.path == "kernel")
    assert bench.path_args(kernel, state, "a", "a-m") == "--path kernel"
    monkeypatch.setenv(bench.INJECT_ENV, "fast")
    with pytest.raises(BenchError, match="STACKBED_INJECT_RX_US='fast'"):
        bench.injected_rx_us()

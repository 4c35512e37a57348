"""The forwarding modes of a middle node (host.forwarding): the registry the lab file, the
bench and the report take them from, and each mode's set-up, report and tear-down on fake
guests (the real ones: tests/vm/test_forward_modes.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from host import forwarding, middles
from host.bench import _record, _target, transit
from host.config import ExperimentConfig, load_lab
from host.experiments import EXPERIMENT_TYPES
from host.experiments.base import BenchError
from host.forwarding import (
    DEFAULT_MODE,
    FORWARD_MODES,
    ForwardMode,
    KernelForwarder,
    Middle,
    Side,
    Transit,
    base_figures,
    forwarded,
    parse_sample,
    proxy_command,
)
from host.lab import LabState, NodeState
from host.report import forwarding_table, hop_series, path_label
from host.ssh import CommandResult
from tests.unit.fake_middles import FakeMiddle, sample_text

GOOD = Path(__file__).resolve().parents[1] / "configs" / "good"


def test_the_registry_names_the_lab_files_choices_kernel_first() -> None:
    assert list(FORWARD_MODES) == [
        "kernel",
        "socket-proxy",
        "splice-proxy",
        "haproxy",
        "extension",
        "extension-offload",
        "stack-proxy-mono",
        "stack-proxy-factored",
    ]
    assert DEFAULT_MODE == "kernel"
    assert get_args(ExperimentConfig.model_fields["forward"].annotation) == tuple(FORWARD_MODES)
    assert ExperimentConfig.model_fields["forward"].default == DEFAULT_MODE
    for name, mode in FORWARD_MODES.items():
        assert mode.name == name and mode.summary and callable(mode.forwarder)


def test_proxies_terminate_and_carry_tcp_only() -> None:
    kernel = FORWARD_MODES["kernel"]
    assert not kernel.terminates and not kernel.needs_middle
    # The extension forwards IP datagrams, whatever they carry, and terminates nothing.
    for extension in (FORWARD_MODES["extension"], FORWARD_MODES["extension-offload"]):
        assert not extension.terminates and extension.needs_middle
        assert all(extension.refuses(kind) is None for kind in EXPERIMENT_TYPES.values())
    proxies = [m for m in FORWARD_MODES.values() if "proxy" in m.name]
    assert len(proxies) == 5  # socket, splice, haproxy and the two on our stack
    for mode in proxies:
        assert mode.terminates and mode.needs_middle
        assert mode.refuses(EXPERIMENT_TYPES["ping"]) == (
            f"forward {mode.name} carries TCP only; ping sends ICMP, which it cannot pass on"
        )
    for kind in EXPERIMENT_TYPES.values():
        assert kernel.refuses(kind) is None
        if kind.transport == "tcp":
            assert all(mode.refuses(kind) is None for mode in proxies)


def test_a_mode_may_refuse_a_type_for_a_reason_of_its_own() -> None:
    def no_iperf3(kind):
        return "not iperf3" if kind.name == "iperf3" else None

    mode = ForwardMode("x", "x", KernelForwarder, limits=no_iperf3)
    assert mode.refuses(EXPERIMENT_TYPES["iperf3"]) == "not iperf3"
    assert mode.refuses(EXPERIMENT_TYPES["stream"]) is None


def test_modes_load_where_the_route_crosses_middles() -> None:
    lab = load_lab(GOOD / "chain_forward.yaml")
    modes = {e.name: e.forward for e in lab.experiments}
    assert modes == {
        "near": "kernel",
        "near-kernel": "kernel",
        "kernel": "kernel",
        "socket": "socket-proxy",
        "splice": "splice-proxy",
        "mono": "socket-proxy",
        "ping": "kernel",
    }


# --------------------------------------------------------------------------- measuring


def test_a_sample_reads_cpu_as_the_traffic_tool_does_and_forwarded_datagrams() -> None:
    text = "cpu  10 1 4 100 5 1 1 0 7 0\nIp: ForwDatagrams InReceives\nIp: 42 9\n"
    s = parse_sample(text, 3.0)
    # total = user..steal (guest time is inside user); busy leaves out idle and iowait
    assert (s.at, s.cpu_total, s.cpu_busy, s.forwarded) == (3.0, 122, 17, 42)


def test_base_figures_over_a_window() -> None:
    before = parse_sample(sample_text(100, 100, 10), 1.0)
    after = parse_sample(sample_text(130, 170, 2010), 3.0)
    assert base_figures(before, after) == {
        "seconds": 2.0,
        "cpu": 0.3,
        "forwarded_packets": 2000,
        "forwarded_packets_per_s": 1000.0,
    }


# --------------------------------------------------------------------------- fake middles


def proxy_report(relayed: int = 2_000_000) -> str:
    """What a proxy that relayed `relayed` bytes one way prints: ready, then stopped."""
    direction = {"bytes": relayed, "syscalls": 40, "user_copy_bytes": relayed}
    stopped = {
        "event": "stopped",
        "mode": "socket",
        "elapsed_s": 2.0,
        "stats": {
            "connections": {"accepted": 1, "completed": 1, "failed": 0, "aborted": 0},
            "client_to_server": direction,
            "server_to_client": direction | {"bytes": 0, "syscalls": 10, "user_copy_bytes": 0},
            "fds_leaked": 0,
        },
    }
    return f"{json.dumps({'event': 'ready'})}\n{json.dumps(stopped)}\n"


def two_middles(**fails: bool) -> tuple[Transit, dict[str, FakeMiddle]]:
    """a - m - n - b: m on 198.18.1.2 (from a) and 198.18.2.1, n on 198.18.2.2 and 198.18.3.1,
    the server b at 198.18.3.2."""
    guests = {
        name: FakeMiddle(name, proxy_report(), "proxy: address in use" if fails.get(name) else None)
        for name in ("m", "n")
    }
    middles = (
        Middle(
            "m", guests["m"], Side("a-m", "198.18.1.2"), Side("m-n", "198.18.2.1"), "198.18.2.2"
        ),
        Middle(
            "n", guests["n"], Side("m-n", "198.18.2.2"), Side("n-b", "198.18.3.1"), "198.18.3.2"
        ),
    )
    return Transit(middles, "198.18.3.2", 5004), guests


def test_kernel_forwarding_reports_each_middles_counters_and_connects_to_the_server() -> None:
    transit_, guests = two_middles()
    with forwarded(FORWARD_MODES["kernel"], transit_) as run:
        assert run.entry == "198.18.3.2"
    assert list(run.middles) == ["m", "n"]
    assert run.middles["m"]["forwarded_packets"] == 7
    assert run.middles["m"]["cpu"] == 0.5
    assert not guests["m"].started  # nothing to start


def test_each_proxy_relays_to_the_next_middle_and_the_last_to_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(0, 100, 2))  # each sample 2 s after the one before
    monkeypatch.setattr(middles.time, "monotonic", lambda: float(next(clock)))
    transit_, guests = two_middles()
    with forwarded(FORWARD_MODES["splice-proxy"], transit_) as run:
        assert run.entry == "198.18.1.2"  # the client connects to m on its own link
        # n's proxy was started first: m's has somewhere to connect to when a client comes
        assert guests["n"].samples == 1 and guests["m"].samples == 1
    (m_cmd,), (n_cmd,) = guests["m"].started, guests["n"].started
    assert "--mode splice --listen 198.18.1.2:5004 --to 198.18.2.2:5004" in m_cmd
    assert "--mode splice --listen 198.18.2.2:5004 --to 198.18.3.2:5004" in n_cmd
    assert m_cmd == proxy_command("splice", transit_.middles[0], 5004)
    assert any(
        c.startswith("kill -TERM $(cat /run/stackbed-proxy-5004.pid)") for c in guests["m"].commands
    )
    m = run.middles["m"]
    assert list(run.middles) == ["m", "n"]
    assert m["relayed_bytes"] == 2_000_000
    assert m["syscalls"] == 50 and m["syscalls_per_mb"] == 25.0
    assert m["user_copy_bytes"] == 2_000_000
    assert m["proxy"]["stats"]["connections"]["accepted"] == 1
    # m sampled at 0 s and 4 s (n at 2 s and 6 s)
    assert (m["seconds"], m["relayed_bytes_per_s"]) == (4.0, 500_000.0)


def test_a_proxy_that_does_not_start_says_why_and_the_others_are_stopped() -> None:
    transit_, guests = two_middles(m=True)
    with (
        pytest.raises(BenchError, match="m: the proxy did not start: proxy: address in use"),
        forwarded(FORWARD_MODES["socket-proxy"], transit_),
    ):
        pytest.fail("the run must not start")
    # n's proxy (started first) was stopped all the same
    assert any(c.startswith("kill -TERM") for c in guests["n"].commands)


def test_an_error_of_the_run_wins_and_the_proxies_are_stopped() -> None:
    transit_, guests = two_middles()
    with (
        pytest.raises(RuntimeError, match="client failed"),
        forwarded(FORWARD_MODES["socket-proxy"], transit_),
    ):
        raise RuntimeError("client failed")
    assert all(any(c.startswith("kill -TERM") for c in g.commands) for g in guests.values())


# --------------------------------------------------------------------------- the bench


def _state(config) -> LabState:
    nodes = {n.name: NodeState(n.name, "d", 1, "log", 1, 512) for n in config.nodes}
    for link in config.links:
        for node in link.endpoints:
            nics = nodes[node].nics
            nics.append({"name": f"eth{len(nics) + 1}", "link": link.name})
            nics[-1]["address"] = str(link.address_of(node))
    return LabState("t", "r", 1, "tcg", "i", "d", "/", "k", 1, None, 0.0, list(nodes.values()))


def test_the_bench_builds_the_middles_with_their_nics_and_next_hops() -> None:
    config = load_lab(GOOD / "chain_forward.yaml")
    state = _state(config)
    exp = config.experiment("socket")
    path = config.path_of(exp)
    target = _target(config, state, str, exp, path, 5003)
    t = transit(config, state, str, path, target)
    assert (t.server_ip, t.port) == ("198.18.3.2", 5003)
    m, n = t.middles
    assert (m.node, m.upstream, m.downstream, m.next_ip) == (
        "m",
        Side("a-m", "198.18.1.2", "eth1", 24),
        Side("m-n", "198.18.2.1", "eth2", 24),
        "198.18.2.2",
    )
    assert (n.node, n.upstream.ip, n.downstream.nic, n.next_ip) == (
        "n",
        "198.18.2.2",
        "eth2",
        "198.18.3.2",
    )
    near = config.experiment("near")
    assert transit(config, state, str, config.path_of(near), target).middles == ()


def test_user_level_ends_through_a_proxy_talk_to_their_neighbour_without_a_gateway() -> None:
    config = load_lab(GOOD / "chain_forward.yaml")
    state = _state(config)
    exp = config.experiment("mono")  # mono at both ends, socket-proxy on m and n
    target = _target(config, state, str, exp, config.path_of(exp), 5005)
    assert "--addr 198.18.1.1/24" in target.client_path
    assert "--addr 198.18.3.2/24" in target.server_path
    assert "--stack-gateway" not in target.client_path + target.server_path
    routed = exp.model_copy(update={"forward": "kernel"})
    target = _target(config, state, str, routed, config.path_of(routed), 5005)
    assert "--stack-gateway 198.18.1.2" in target.client_path
    assert "--stack-gateway 198.18.3.1" in target.server_path


def test_results_record_the_mode_and_each_middles_medians() -> None:
    config = load_lab(GOOD / "chain_forward.yaml")
    exp = config.experiment("socket")
    runs = [
        {"p50_us": 100.0, "round": r, "forward": {"m": {"cpu": c, "relayed_bytes": b, "proxy": {}}}}
        for r, c, b in ((1, 0.2, 10), (2, 0.4, 30), (3, 0.3, 20))
    ]
    runs.append({"error": "boom", "round": 4})
    rec = _record(exp, config.path_of(exp), runs, {})
    assert rec["forward"] == {
        "mode": "socket-proxy",
        "middles": {"m": {"cpu": 0.3, "relayed_bytes": 20}},
    }
    rec |= {"stack": None, "path": "kernel"}
    assert path_label(rec) == "kernel · socket-proxy"
    table = forwarding_table({"results": [rec]})
    assert table is not None and table.row_count == 1


def test_kernel_forwarding_keeps_the_path_label_so_hop_series_stay_whole() -> None:
    def rec(hops: int, mode: str | None) -> dict:
        nodes = ["c", *(f"r{i}" for i in range(hops)), "s"]
        out = {
            "experiment": f"s{hops}{mode}",
            "type": "stream",
            "path": "kernel",
            "stack": None,
            "route": {"nodes": nodes, "links": []},
            "summary": {"mbit_per_s": 100.0 / (hops + 1)},
            "runs": [{"mbit_per_s": 100.0 / (hops + 1), "round": 1}],
        }
        return out | ({"forward": {"mode": mode, "middles": {}}} if mode else {})

    results = [rec(0, "kernel"), rec(1, "kernel"), rec(2, None), rec(1, "splice-proxy")]
    assert [path_label(r) for r in results] == ["kernel"] * 3 + ["kernel · splice-proxy"]
    assert list(hop_series({"results": results})) == [
        "kernel stream",
        "kernel · splice-proxy stream",
    ]


def test_a_new_mode_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a mode added later needs from the rest: only its entry (the lab file's Literal is
    built from the registry when host.config is imported)."""
    mode = ForwardMode("later", "frames between the NICs", KernelForwarder)
    monkeypatch.setitem(forwarding.FORWARD_MODES, "later", mode)
    transit_, _guests = two_middles()
    with forwarded(FORWARD_MODES["later"], transit_) as run:
        assert run.entry == "198.18.3.2"
    assert run.mode == "later" and set(run.middles) == {"m", "n"}


def test_the_proxy_lab_runs_each_type_in_each_mode_against_kernel_forwarding() -> None:
    lab = load_lab(GOOD.parents[2] / "configs" / "proxy.yaml")
    assert {lab.path_of(e).nodes for e in lab.experiments} == {("a", "m", "b")}
    cells = {(e.forward, e.type): e for e in lab.experiments}
    assert set(cells) == {(m, t) for m in FORWARD_MODES for t in ("stream", "rr", "iperf3")}
    for (mode, kind), exp in cells.items():
        assert exp.path == "kernel"
        if mode != "kernel" and kind != "iperf3":  # iperf3 has no compared figure
            assert cells["kernel", kind].name == exp.baseline


class FakeChannel:
    """A channel that gives its stdout and stderr chunks one read at a time, then exits."""

    def __init__(self, out: list[bytes], err: list[bytes]) -> None:
        self.out, self.err = list(out), list(err)

    def recv_ready(self) -> bool:
        return bool(self.out)

    def recv_stderr_ready(self) -> bool:
        return bool(self.err)

    def recv(self, _n: int) -> bytes:
        return self.out.pop(0)

    def recv_stderr(self, _n: int) -> bytes:
        return self.err.pop(0)

    def exit_status_ready(self) -> bool:
        return not (self.out or self.err)

    def recv_exit_status(self) -> int:
        return 0

    def settimeout(self, _t: float) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_client_behind_a_proxy_waits_for_the_server_to_listen_and_nothing_is_lost() -> None:
    from host.ssh import RunningCommand

    chan = FakeChannel([b"early\n", b"{}\n"], [b'{"event": "list', b'ening"}\n', b"late\n"])
    cmd = RunningCommand("b", "sink", chan)  # type: ignore[arg-type]
    assert cmd.wait_for_stderr('"event": "listening"', timeout=5)
    assert chan.err == [b"late\n"]  # it stopped reading once the event was there
    result = cmd.wait(timeout=5)
    assert result.stdout == "early\n{}\n"
    assert result.stderr == '{"event": "listening"}\nlate\n'
    ended = RunningCommand("b", "sink", FakeChannel([], [b"error\n"]))  # type: ignore[arg-type]
    assert not ended.wait_for_stderr('"event": "listening"', timeout=5)


def test_haproxy_relays_from_the_middles_upstream_address_to_the_next_hop() -> None:
    from host.forwarding import HaproxyForwarder, haproxy_command, haproxy_config

    transit_, _guests = two_middles()
    conf = haproxy_config(transit_.middles[1], 5004)
    assert "mode tcp" in conf and "bind 198.18.2.2:5004" in conf
    assert "server next 198.18.3.2:5004" in conf
    cmd = haproxy_command(transit_.middles[1], 5004)
    assert "echo $$ > /run/stackbed-haproxy-5004.pid && exec haproxy -db -f " in cmd
    forwarder = HaproxyForwarder(transit_)
    assert forwarder.entry == "198.18.1.2"
    assert forwarder.files() == ["/run/stackbed-haproxy-5004.cfg"]  # removed at the stop
    stopped = CommandResult("haproxy", -1, "", "")  # ended by its SIGTERM
    assert forwarder.report(stopped) == {"event": "stopped", "exit_status": -1}
    assert forwarder.report(CommandResult("haproxy", 1, "", "[ALERT] cannot bind")) is None


def test_each_modes_forwarder_terminates_exactly_when_the_mode_says_so() -> None:
    """The lab file's checks read the mode's flag, the run's entry the forwarder's: they agree."""
    transit_, _guests = two_middles()
    for mode in FORWARD_MODES.values():
        forwarder = mode.forwarder(transit_)
        assert forwarder.terminates == mode.terminates, mode.name
        assert forwarder.entry == ("198.18.1.2" if mode.terminates else "198.18.3.2"), mode.name

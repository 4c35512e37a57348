"""The forwarding modes on our own code (host.user_forwarders): what each middle is told to run,
the routes the extension gets on a longer chain, and the figures from their reports, on fake
guests (the real ones: tests/vm/test_forward_modes.py)."""

from __future__ import annotations

import json

import pytest

from host.experiments.base import BenchError
from host.forwarding import FORWARD_MODES, forwarded
from host.middles import Middle, Side, Transit
from host.user_forwarders import (
    extension_command,
    extension_figures,
    extension_routes,
    stack_proxy_command,
    stack_proxy_figures,
)
from tests.unit.fake_middles import FakeMiddle

BASE = {"seconds": 2.0, "cpu": 0.5, "forwarded_packets": 0, "forwarded_packets_per_s": 0.0}


def chain(n: int, guests: dict | None = None) -> Transit:
    """c - m1 - ... - mN - s; link k is 198.18.(k+1).0/24, the left end .1, the right end .2;
    each middle's NICs are eth1 (towards the client) and eth2."""
    middles = []
    for i in range(n):
        name = f"m{i + 1}"
        middles.append(
            Middle(
                name,
                (guests or {}).get(name),  # type: ignore[arg-type]
                Side(f"l{i}", f"198.18.{i + 1}.2", "eth1", 24),
                Side(f"l{i + 1}", f"198.18.{i + 2}.1", "eth2", 24),
                f"198.18.{i + 2}.2",
            )
        )
    return Transit(tuple(middles), f"198.18.{n + 1}.2", 5010)


def test_each_extension_routes_the_subnets_it_is_not_on_towards_the_right_neighbour() -> None:
    t = chain(3)
    assert extension_routes(t, 0) == [
        ("198.18.3.0/24", "198.18.2.2"),
        ("198.18.4.0/24", "198.18.2.2"),
    ]
    assert extension_routes(t, 1) == [
        ("198.18.1.0/24", "198.18.2.1"),
        ("198.18.4.0/24", "198.18.3.2"),
    ]
    assert extension_routes(t, 2) == [
        ("198.18.1.0/24", "198.18.3.1"),
        ("198.18.2.0/24", "198.18.3.1"),
    ]
    assert extension_routes(chain(1), 0) == []  # both ends' subnets are its own


def test_the_extension_takes_both_nics_at_the_middles_addresses() -> None:
    cmd = extension_command(chain(2), 1)
    assert "echo $$ > /run/stackbed-extension-5010.pid" in cmd
    assert "exec python3 -m guest.stack.extension --iface eth1 --iface eth2" in cmd
    assert "--addr eth1=198.18.2.2/24 --addr eth2=198.18.3.1/24" in cmd
    assert cmd.endswith("--route 198.18.1.0/24 via 198.18.2.1")


def test_a_middle_whose_nic_is_unknown_is_refused_before_anything_runs() -> None:
    t = chain(1)
    m = t.middles[0]
    blind = Transit(
        (Middle(m.node, m.guest, Side("l0", m.upstream.ip), m.downstream, m.next_ip),),
        t.server_ip,
        t.port,
    )
    with pytest.raises(BenchError, match="m1: the NIC of its upstream link is not known"):
        extension_command(blind, 0)


def extension_stopped(frames: int = 1000) -> dict:
    counters = {
        "frames_in": frames + 10,
        "forwarded": frames,
        "bytes_forwarded": frames * 1500,
        "no_route": 2,
        "ttl_expired": 1,
        "queue_drops": 3,
        "tx_ring_full": 5,
        "poll_wakeups": 50,
        "tx_kicks": 150,
    }
    per_frame = {
        "syscalls_per_frame": 0.2,
        "slot_copies_per_frame": 1.0,
        "engine_copies_per_frame": 0.0,
    }
    return {
        "event": "stopped",
        "stats": {
            "extension": counters,
            "per_frame": per_frame,
            "kernel": {"eth1": {"rx_dropped": 4, "rx_ring_full": 0}, "eth2": {"rx_dropped": 0}},
            "incarnations": 1,
            "restarts": 0,
        },
    }


def test_extension_figures_count_its_own_frames_drops_and_system_calls() -> None:
    f = extension_figures(BASE | {"forwarded_packets": 3}, extension_stopped())
    assert f["kernel_forwarded_packets"] == 3  # the kernel's count, kept apart
    assert (f["forwarded_packets"], f["forwarded_packets_per_s"]) == (1000, 500.0)
    assert (f["relayed_bytes"], f["relayed_bytes_per_s"]) == (1_500_000, 750_000.0)
    assert (f["drops"], f["ring_drops"]) == (2 + 1 + 3 + 5 + 4, 4)
    assert (f["syscalls"], f["syscalls_per_mb"]) == (200, 133.33)
    assert (f["syscalls_per_frame"], f["copies_per_frame"]) == (0.2, 1.0)
    assert f["cpu"] == 0.5 and f["extension"]["incarnations"] == 1


def test_the_stack_proxy_listens_on_the_upstream_nic_and_connects_to_the_next_hop() -> None:
    t = chain(2)
    cmd = stack_proxy_command("factored", t.middles[0], 5010)
    assert "echo $$ > /run/stackbed-stack-proxy-5010.pid" in cmd
    assert (
        "guest.tools.stack_proxy --path factored --listen-iface eth1 --listen-addr "
        "198.18.1.2/24 --port 5010 --to-iface eth2 --to-addr 198.18.2.1/24 --to 198.18.2.2:5010"
    ) in cmd


def test_stack_proxy_figures_count_relayed_bytes_and_ring_calls() -> None:
    d = {"bytes": 1_000_000, "reads": 30, "writes": 20, "user_copy_bytes": 1_000_000}
    stopped = {
        "event": "stopped",
        "stats": {
            "client_to_server": d,
            "server_to_client": d | {"bytes": 0, "reads": 0, "writes": 0, "user_copy_bytes": 0},
        },
    }
    f = stack_proxy_figures(BASE, stopped)
    assert (f["relayed_bytes"], f["relayed_bytes_per_s"]) == (1_000_000, 500_000.0)
    assert (f["relay_calls"], f["relay_calls_per_mb"]) == (50, 50.0)
    assert f["user_copy_bytes"] == 1_000_000 and f["proxy"] is stopped


# --------------------------------------------------------------------------- the whole mode


def middle(name: str, dies: bool = False) -> FakeMiddle:
    """A middle whose extension reports `extension_stopped()`, or cannot confine itself."""
    fails = "extension: cannot confine: no seccomp" if dies else None
    return FakeMiddle(name, json.dumps(extension_stopped()) + "\n", fails)


def test_the_extension_mode_starts_from_the_server_side_and_reports_every_middle() -> None:
    guests = {"m1": middle("m1"), "m2": middle("m2")}
    t = chain(2, guests)
    order: list[str] = []
    for g in guests.values():
        start = g.start
        g.start = lambda c, g=g, start=start: (order.append(g.name), start(c))[1]  # type: ignore[method-assign]
    with forwarded(FORWARD_MODES["extension"], t) as run:
        assert run.entry == "198.18.3.2"  # the ends talk to each other through it
    assert order == ["m2", "m1"]
    assert list(run.middles) == ["m1", "m2"]
    assert run.middles["m1"]["forwarded_packets"] == 1000
    assert all(
        any(c.startswith("kill -TERM $(cat /run/stackbed-extension-5010.pid)") for c in g.commands)
        for g in guests.values()
    )


def test_an_extension_that_dies_at_start_says_why_and_the_others_are_stopped() -> None:
    guests = {"m1": middle("m1", dies=True), "m2": middle("m2")}
    with (
        pytest.raises(
            BenchError, match="m1: the extension did not start: extension: cannot confine"
        ),
        forwarded(FORWARD_MODES["extension"], chain(2, guests)),
    ):
        pytest.fail("the run must not start")
    assert any(c.startswith("kill -TERM") for c in guests["m2"].commands)


def test_the_stack_proxy_modes_send_the_client_to_the_first_middle() -> None:
    t = chain(2, {"m1": middle("m1"), "m2": middle("m2")})
    for path in ("mono", "factored"):
        forwarder = FORWARD_MODES[f"stack-proxy-{path}"].forwarder(t)
        assert forwarder.entry == "198.18.1.2"
        assert f"--path {path} " in forwarder.command(t.middles[1], 1)  # type: ignore[attr-defined]

"""The loss benchmark's arithmetic: medians per rate and sender, ratios to Linux's."""

from __future__ import annotations

from guest.bench.loss import ABLATION, SENDERS, summarise
from guest.testing.netns import parse_snmp


def _row(sender: str, loss: float, seconds: float) -> dict:
    return {"sender": sender, "loss_percent": loss, "seconds": seconds, "resent_on_wire": 3}


def test_medians_and_ratios_to_linux_per_loss_rate() -> None:
    rows = [
        _row("linux", 1, 0.10), _row("linux", 1, 0.30), _row("linux", 1, 0.20),
        _row("mono", 1, 0.40), _row("mono", 1, 0.60), _row("mono", 1, 0.50),
        _row("mono", 0, 0.10),
    ]  # fmt: skip
    out = {(s["loss_percent"], s["sender"]): s for s in summarise(rows)}
    assert out[(1, "linux")]["median_s"] == 0.2 and out[(1, "linux")]["of_linux"] == 1.0
    assert out[(1, "mono")]["median_s"] == 0.5 and out[(1, "mono")]["of_linux"] == 2.5
    assert out[(0, "mono")]["of_linux"] is None  # no Linux row at that rate: no ratio
    assert [s["loss_percent"] for s in summarise(rows)] == [0, 1, 1]
    assert out[(1, "mono")]["timeouts"] is None  # rows without counters: nothing to say


def test_timeouts_and_probes_come_from_each_senders_own_counters() -> None:
    linux = [
        {**_row("linux", 5, 0.3), "kernel": {"TcpExt.TCPTimeouts": t, "TcpExt.TCPLossProbes": 4}}
        for t in (0, 2, 3)
    ]
    mono = [{**_row("mono", 5, 0.9), "stack": {"tcp.timeouts": 5, "tcp.tlp_probes": p}}
            for p in (20, 30)]  # fmt: skip
    out = {s["sender"]: s for s in summarise(linux + mono)}
    assert (out["linux"]["timeouts"], out["linux"]["probes"]) == (2, 4)
    assert (out["mono"]["timeouts"], out["mono"]["probes"]) == (5, 25)


def test_the_kernels_snmp_tables_read_as_group_dot_name() -> None:
    text = (
        "Tcp: RtoAlgorithm RetransSegs InErrs\n"
        "Tcp: 1 158 0\n"
        "TcpExt: SyncookiesSent TCPTimeouts\n"
        "TcpExt: 0 3\n"
    )
    assert parse_snmp(text) == {
        "Tcp.RtoAlgorithm": 1, "Tcp.RetransSegs": 158, "Tcp.InErrs": 0,
        "TcpExt.SyncookiesSent": 0, "TcpExt.TCPTimeouts": 3,
    }  # fmt: skip


def test_the_ablation_turns_off_known_mechanisms_of_the_mono_stack() -> None:
    from guest.stack.options import MECHANISMS

    assert not set(ABLATION) & set(SENDERS)
    for off in ABLATION.values():
        assert set(off.split(",")) <= set(MECHANISMS)

"""The experiment type registry: each type is one module, and config, bench and report take
everything type-specific from it."""

from __future__ import annotations

import textwrap
from typing import get_args

import pytest

from host import experiments
from host import report as report_module
from host.config import ConfigError, ExperimentConfig, parse_lab
from host.experiments import EXPERIMENT_TYPES, options
from host.experiments.base import Column, ExperimentType, Option
from host.experiments.columns import MBIT_PER_S
from host.report import figure_columns, results_table

LAB = """\
lab: t
nodes: [{name: a}, {name: b}]
links: [{endpoints: [a, b]}]
experiments:
"""


def parse_one(entry: str):
    return parse_lab(LAB + f"  - {entry}\n", "lab.yaml").experiments[0]


def test_registry_lists_the_lab_file_types_in_order() -> None:
    assert list(EXPERIMENT_TYPES) == ["stream", "rr", "iperf3", "ping", "transfer"]
    assert get_args(ExperimentConfig.model_fields["type"].annotation) == tuple(EXPERIMENT_TYPES)


@pytest.mark.parametrize("name", list(EXPERIMENT_TYPES))
def test_every_type_has_a_runner_columns_and_a_fragment(name: str) -> None:
    kind = EXPERIMENT_TYPES[name]
    assert kind.name == name and callable(kind.run)
    assert kind.columns and all(isinstance(c, Column) for c in kind.columns)
    assert all(isinstance(o, Option) for o in kind.options.values())
    for field in kind.options:
        assert field in ExperimentConfig.model_fields
    if kind.compared is not None:
        assert kind.compared.key in kind.columns.values()


@pytest.mark.parametrize("name", list(EXPERIMENT_TYPES))
def test_a_type_gets_its_option_defaults_and_none_of_the_others(name: str) -> None:
    exp = parse_one(f"{{name: e, type: {name}, client: a, server: b}}")
    for field, (option, owners) in options().items():
        assert getattr(exp, field) == (option.default if name in owners else None)


def test_an_option_of_another_type_is_refused_at_its_line() -> None:
    text = LAB + "  - name: e\n    type: ping\n    client: a\n    server: b\n    resp_size: 9\n"
    with pytest.raises(ConfigError) as caught:
        parse_lab(text, "lab.yaml")
    assert str(caught.value) == (
        "lab.yaml:9: experiments[0].resp_size: resp_size only applies to rr experiments, not ping"
    )


def test_an_unknown_type_names_file_line_field_and_the_types() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_lab(LAB + "  - {name: e, type: forward, client: a, server: b}\n", "lab.yaml")
    assert str(caught.value) == (
        "lab.yaml:5: experiments[0].type: Input should be 'stream', 'rr', 'iperf3', 'ping' "
        "or 'transfer'"
    )


def test_only_types_with_a_compared_figure_take_a_baseline() -> None:
    text = textwrap.dedent(
        """\
          - {name: p, type: ping, client: a, server: b}
          - {name: q, type: ping, client: a, server: b, baseline: p}
        """
    )
    with pytest.raises(
        ConfigError, match="only stream and rr and transfer experiments are compared"
    ):
        parse_lab(LAB + text, "lab.yaml")


def test_types_sharing_an_option_must_agree_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(name: str, default: int) -> ExperimentType:
        return ExperimentType(name, run=lambda t: {}, options={"size": Option(int, default)})

    monkeypatch.setattr(experiments, "EXPERIMENT_TYPES", {"x": fake("x", 1), "y": fake("y", 1)})
    assert options() == {"size": (Option(int, 1), ("x", "y"))}
    monkeypatch.setattr(experiments, "EXPERIMENT_TYPES", {"x": fake("x", 1), "y": fake("y", 2)})
    with pytest.raises(TypeError, match="option size differs"):
        options()


def test_the_table_has_todays_columns() -> None:
    titles = [c.title for c in figure_columns()]
    assert titles == [
        "seconds",
        "Mbit/s",
        "trans/s",
        "p50 µs",
        "p99 µs",
        "client CPU",
        "server CPU",
        "host CPU",
        "rexmit",
    ]


def _data(records: list[dict]) -> dict:
    meta = {
        "lab": "t",
        "accel": "tcg",
        "host": {"qemu": "QEMU"},
        "guest_kernel": "6.1",
        "image": {"name": "default", "digest": "0"},
        "boot_seconds": {"a": 1.0},
        "git_commit": None,
        "git_dirty": False,
    }
    return {"metadata": meta, "results": records}


def _record(name: str, kind: str, summary: dict) -> dict:
    return {"experiment": name, "type": kind, "path": "kernel", "summary": summary, "errors": []}


def test_a_new_type_brings_its_column_into_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    hops = Column("hops", 35)
    kind = ExperimentType("forward", run=lambda t: {}, columns={hops: "hops", MBIT_PER_S: "mbit"})
    monkeypatch.setattr(report_module, "EXPERIMENT_TYPES", {**EXPERIMENT_TYPES, "forward": kind})
    records = [_record("f", "forward", {"hops": 3, "mbit": 12.34}), _record("r", "rr", {})]
    table = results_table(_data(records))
    titles = [str(c.header) for c in table.columns]
    assert titles.index("hops") == titles.index("p50 µs") + 1
    row = {str(c.header): next(iter(c.cells)) for c in table.columns}
    assert (row["hops"], row["Mbit/s"], row["trans/s"], row["check"]) == ("3", "12.3", "-", "ok")


def test_a_table_shows_only_the_columns_its_types_fill() -> None:
    table = results_table(_data([_record("s", "stream", {"mbit_per_s": 1.0})]))
    titles = [str(c.header) for c in table.columns]
    assert "Mbit/s" in titles and "seconds" not in titles and "p50 µs" not in titles
    assert "transfer:" not in str(table.caption)  # nor the notes of types it does not use


def test_ping_fills_p50_and_p99_from_its_round_trips() -> None:
    summary = {"rtt_avg_us": 900.4, "rtt_max_us": 2000.0, "p50_us": None}
    table = results_table(_data([_record("p", "ping", summary)]))
    row = {str(c.header): next(iter(c.cells)) for c in table.columns}
    assert (row["p50 µs"], row["p99 µs"]) == ("900", "2000")
    assert "client CPU" not in row  # no type of this table fills it
    assert "p50/p99 for ping are avg/max RTT" in str(table.caption)


def test_links_that_dropped_frames_on_the_host_are_named_in_the_caption() -> None:
    quiet = {**_record("s", "stream", {"mbit_per_s": 1.0}), "runs": [{"link_drops": 0}]}
    lossy = {**_record("t", "stream", {"mbit_per_s": 1.0}), "runs": [{"link_drops": 3}] * 2}
    assert "dropped" not in str(results_table(_data([quiet])).caption)
    data = _data([quiet, lossy])
    data["metadata"]["link_rcvbuf"] = 8 << 20
    assert "the links dropped 6 frames on the host[" in str(results_table(data).caption)
    data["metadata"]["link_rcvbuf"] = None
    assert "their buffers at the host default" in str(results_table(data).caption)

"""Sweeps in lab files: one entry, one parameter, several values; each member named, compared
with its own counterpart, and its errors reported where the file says them."""

from __future__ import annotations

import pytest

from host.config import ConfigError, parse_lab

LAB = """\
lab: s
nodes: [{{name: a}}, {{name: b}}]
links:
  - endpoints: [a, b]
experiments:
  - name: kernel-stream
    type: stream
    client: a
    server: b
    sweep: {{msg_size: [1448, 65536]}}
  - name: mono-stream
    type: stream
    path: mono
    client: a
    server: b
    baseline: kernel-stream
    {extra}
"""


def lab(extra: str = "sweep: {msg_size: [1448, 65536]}"):
    return parse_lab(LAB.format(extra=extra), "lab.yaml")


def test_each_value_becomes_a_member_with_its_point_and_its_own_baseline() -> None:
    exps = {e.name: e for e in lab().experiments}
    assert list(exps) == [
        "kernel-stream.msg_size-1448",
        "kernel-stream.msg_size-65536",
        "mono-stream.msg_size-1448",
        "mono-stream.msg_size-65536",
    ]
    member = exps["mono-stream.msg_size-1448"]
    assert member.msg_size == 1448
    assert member.baseline == "kernel-stream.msg_size-1448"
    assert member.sweep_point == {"family": "mono-stream", "parameter": "msg_size", "value": 1448}


def test_an_unswept_entry_names_a_member_as_its_baseline() -> None:
    with pytest.raises(ConfigError, match=r"lab.yaml:16: experiments\[1\].baseline: no "):
        lab("duration_s: 5")
    fixed = parse_lab(
        LAB.format(extra="duration_s: 5").replace(
            "baseline: kernel-stream", "baseline: kernel-stream.msg_size-65536"
        ),
        "lab.yaml",
    )
    assert fixed.experiments[-1].sweep_point is None


@pytest.mark.parametrize(
    ("extra", "where", "message"),
    [
        ("sweep: {msg_size: [1448, 0]}", "17: experiments[1].sweep.msg_size[1]", "greater than"),
        ("sweep: {mtu: [1280, 99999]}", "17: experiments[1].sweep.mtu[1]", "less than"),
        ("sweep: {colour: [1, 2]}", "17: experiments[1].sweep", "cannot sweep 'colour'"),
        ("sweep: {msg_size: [1448]}", "17: experiments[1].sweep.msg_size", "2 to 16 values"),
        ("sweep: {msg_size: [8, 8]}", "17: experiments[1].sweep.msg_size", "listed twice"),
        ("sweep: {req_size: [8, 9]}", "17: experiments[1].sweep.req_size[0]", "only applies"),
    ],
)
def test_a_bad_sweep_is_refused_at_its_line(extra: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        lab(extra)
    text = str(err.value)
    assert f"lab.yaml:{where}" in text and message in text, text


def test_a_parameter_both_set_and_swept_is_refused() -> None:
    with pytest.raises(ConfigError, match="msg_size is both set and swept"):
        lab("msg_size: 100\n    sweep: {msg_size: [1448, 65536]}")

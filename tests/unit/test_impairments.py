"""Link impairments: the lab file's `impair:` and the netem commands it becomes."""

from __future__ import annotations

import json
import textwrap

import pytest
from pydantic import ValidationError

from host.config import parse_lab
from host.impairments import LinkImpair, Netem, clear_command, netem_command

LAB = """
lab: t
nodes: [{name: a}, {name: b}]
links:
  - endpoints: [a, b]
    impair:
      delay: 10ms
      jitter: 1ms
      loss: 2%
      from:
        b: {loss: 0.5%, rate: 100mbit}
experiments:
  - name: p
    type: ping
    client: a
    server: b
    impair:
      a-b: {delay: 20ms}
"""


def test_netem_arguments_in_netems_order() -> None:
    netem = Netem(
        rate="1gbit",
        corrupt="0.1%",
        reorder="25%",
        duplicate="1%",
        loss="2%",
        jitter="1.5ms",
        delay="10ms",
    )
    assert netem.args() == (
        "delay 10ms 1.5ms loss 2% duplicate 1% reorder 25% corrupt 0.1% rate 1gbit"
    )
    assert netem_command("eth1", netem) == f"tc qdisc replace dev eth1 root netem {netem.args()}"


def test_nothing_set_clears_the_qdisc() -> None:
    assert netem_command("eth2", Netem()) == clear_command("eth2")
    assert "tc qdisc del dev eth2 root" in clear_command("eth2")


@pytest.mark.parametrize(
    ("written", "kept"),
    [("10 ms", "10ms"), ("1.50ms", "1.5ms"), ("200us", "200us"), ("1s", "1s"), ("0ms", "0ms")],
)
def test_durations_keep_their_unit(written: str, kept: str) -> None:
    assert Netem(delay=written).delay == kept


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("delay", "-1ms", "cannot be negative"),
        ("delay", "11s", "at most 10s"),
        ("delay", 10, "has no unit"),
        ("delay", "10min", "unknown unit 'min'"),
        ("loss", "100.5%", "at most 100%"),
        ("loss", "2", "has no unit"),
        ("corrupt", "-2%", "cannot be negative"),
        ("rate", "10MBps", "unknown unit 'mbps'"),
        ("rate", True, "written with its unit"),
        ("duplicate", "lots", "is not a percentage"),
    ],
)
def test_values_out_of_range_or_of_the_wrong_unit(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Netem(**{field: value})


def test_a_direction_is_the_links_fields_overridden_by_its_senders() -> None:
    impair = LinkImpair.model_validate(
        {"delay": "5ms", "loss": "1%", "from": {"a": {"loss": "3%"}}}
    )
    assert impair.direction("a").given() == {"delay": "5ms", "loss": "3%"}
    assert impair.direction("b").given() == {"delay": "5ms", "loss": "1%"}


def test_lab_file_impairments_and_experiment_override_resolve() -> None:
    lab = parse_lab(textwrap.dedent(LAB))
    link = lab.link("a-b")
    assert link.impair is not None
    assert link.impair.direction("a").args() == "delay 10ms 1ms loss 2%"
    assert link.impair.direction("b").args() == "delay 10ms 1ms loss 0.5% rate 100mbit"
    override = lab.experiment("p").impair["a-b"]
    assert override.direction("a").args() == "delay 20ms"
    dumped = json.loads(json.dumps(lab.to_dict()))
    assert dumped["links"][0]["impair"]["from"]["b"]["rate"] == "100mbit"


def _state(lab):
    from host.lab import LabState, NodeState

    nodes = []
    for node in lab.nodes:
        state = NodeState(node.name, f"sb-t-{node.name}", 2222, "log", 1, 512)
        for k, link in enumerate(x for x in lab.links if node.name in x.endpoints):
            state.nics.append({"name": f"eth{k + 1}", "link": link.name})
        nodes.append(state)
    return LabState("t", "r", 1, "tcg", "i", "d", "/", "k", 1, None, 0.0, nodes)


def test_each_sender_gets_its_direction_on_its_nic_for_the_link() -> None:
    from host.lab import impairment_plan

    lab = parse_lab(textwrap.dedent(LAB))
    plan = impairment_plan(_state(lab), {"a-b": lab.link("a-b").impair})
    assert plan["a"][0] == "tc qdisc replace dev eth1 root netem delay 10ms 1ms loss 2%"
    assert plan["b"][1] == [
        {
            "link": "a-b",
            "dev": "eth1",
            "delay": "10ms",
            "jitter": "1ms",
            "loss": "0.5%",
            "rate": "100mbit",
        }
    ]
    cleared = impairment_plan(_state(lab), {"a-b": None})
    assert cleared["a"] == (clear_command("eth1"), [{"link": "a-b", "dev": "eth1"}])


def test_results_record_the_override_in_force_on_each_link_crossed() -> None:
    from host.bench import impairments_in_force

    lab = parse_lab(textwrap.dedent(LAB))
    exp = lab.experiment("p")
    forced = impairments_in_force(lab, exp, lab.path_of(exp))
    assert forced == {"a-b": {"a": {"delay": "20ms"}, "b": {"delay": "20ms"}}}
    exp.impair = {}
    assert impairments_in_force(lab, exp, lab.path_of(exp))["a-b"]["a"]["loss"] == "2%"

"""Pinning a node's vCPUs: the CPU-set syntax, the lab file, the domain XML, the metadata."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from host import cpusets
from host.bench import placement
from host.config import load_lab
from host.domain import NodeSpec, domain_xml
from host.lab import LabState, NodeState


@pytest.mark.parametrize(
    ("text", "cpus"), [("0", (0,)), ("0-1", (0, 1)), ("3,0-1", (0, 1, 3)), ("1,1", (1,))]
)
def test_a_cpu_set_is_numbers_and_ranges(text: str, cpus: tuple[int, ...]) -> None:
    assert cpusets.parse(text) == cpus


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a CPU set"),
        ("a", "not a CPU set"),
        ("0-", "not a CPU set"),
        ("^1", "not a CPU set"),
        ("2-1", "runs backwards"),
    ],
)
def test_anything_else_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        cpusets.parse(text)


def test_a_cpu_this_process_may_not_use_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpusets, "usable", lambda: frozenset({0, 1, 2, 5}))
    assert cpusets.check("0-2") == "0-2"
    with pytest.raises(ValueError, match=r"host CPU 3, 4 not available here \(usable: 0-2,5\)"):
        cpusets.check("1-4")


def test_nodes_take_the_defaults_cpuset_unless_they_set_their_own(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        textwrap.dedent(
            """
            lab: pinned
            defaults: {cpuset: "0"}
            nodes:
              - name: a
              - name: b
                cpuset: 0-1
            links:
              - endpoints: [a, b]
            """
        )
    )
    lab = load_lab(path)
    assert [(n.name, n.cpuset) for n in lab.nodes] == [("a", "0"), ("b", "0-1")]


def _spec(cpuset: str | None) -> NodeSpec:
    return NodeSpec(
        lab="t", run_id="r", node="a", domain_name="sb-t-a", accel="tcg", vcpus=2,
        memory_mib=512, cpuset=cpuset, kernel="/k", initrd="/i", disk="/d",
        console_log="/c", ssh_port=2222, mgmt_mac="52:54:00:00:00:01", ssh_pubkey_b64="AAAA",
    )  # fmt: skip


def test_the_domain_pins_its_vcpus_only_when_asked() -> None:
    assert "<vcpu>2</vcpu>" in domain_xml(_spec(None))
    assert "<vcpu placement='static' cpuset='1'>2</vcpu>" in domain_xml(_spec("1"))


def _state(*cpusets_: str | None) -> LabState:
    """Only the nodes matter to `placement`."""
    nodes = [
        NodeState(name=name, domain=f"sb-t-{name}", ssh_port=0, console_log="", vcpus=1,
                  memory_mib=512, cpuset=cpuset)
        for name, cpuset in zip("amb", cpusets_, strict=False)
    ]  # fmt: skip
    return LabState(
        lab="t", run_id="r", slot=0, accel="tcg", image="default", image_digest="", run_dir="",
        key_path="", owner_pid=0, config_path=None, created=0.0, nodes=nodes,
    )  # fmt: skip


def test_the_metadata_says_where_each_node_ran() -> None:
    # The unpinned form is what results had before pinning existed: comparable with them.
    assert placement(_state(None, None, None)) == "a=1 m=1 b=1 unpinned"
    assert placement(_state("0", None, "1")) == "a=1@0 m=1@any b=1@1"

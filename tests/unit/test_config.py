"""Tests for host.config: lab files are validated up front with precise file:line: field errors.

Broken examples live in tests/configs/broken/, one problem per file, each starting with
``# expect: <line>: <field>: <message substring>`` (field ``-`` for file-level problems such
as syntax errors). Adding a case is just adding a file.
"""

from __future__ import annotations

import json
import re
import textwrap
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from pydantic import ValidationError

from guest.stack.factored.boundaries import BOUNDARIES, DEFAULT_BOUNDARY
from host import config as config_module
from host.config import (
    ALLOWED_PATHS,
    ConfigError,
    ConfigProblem,
    LabConfig,
    StackOptions,
    load_lab,
    parse_lab,
)

ROOT = Path(__file__).resolve().parents[2]
BROKEN_DIR = ROOT / "tests" / "configs" / "broken"
GOOD_DIR = ROOT / "tests" / "configs" / "good"
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"

EXPECT_RE = re.compile(r"^# expect: (?P<line>\d+): (?P<field>[^:]*): (?P<message>.+)$")

#: Cases the brief requires; the directory may hold more, but never fewer.
REQUIRED_BROKEN = {
    "unknown_field_top",
    "unknown_field_nested",
    "bad_type_vcpus",
    "link_missing_node",
    "duplicate_node_names",
    "duplicate_link_names",
    "duplicate_experiment_names",
    "duplicate_yaml_key",
    "address_outside_bench_range",
    "address_same_both_ends",
    "address_different_subnets",
    "address_network",
    "address_broadcast",
    "address_overlap",
    "address_management_subnet",
    "self_link",
    "experiment_no_link",
    "experiment_unknown_type",
    "experiment_path_not_allowed",
    "mtu_out_of_range",
    "yaml_syntax_error",
    "empty_file",
    "top_level_list",
}

BROKEN_FILES = sorted(BROKEN_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "lab.yaml") -> Path:
    """Write a dedented lab file so line numbers in tests match what is written here."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems_of(path: Path | str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_lab(path)
    return caught.value.errors


# --------------------------------------------------------------------------- broken corpus


def test_broken_corpus_covers_required_cases() -> None:
    assert {path.stem for path in BROKEN_FILES} >= REQUIRED_BROKEN


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda path: path.stem)
def test_broken_config_reports_expected_problem(path: Path) -> None:
    header = path.read_text().splitlines()[0]
    expect = EXPECT_RE.match(header)
    assert expect, f"{path.name}: first line must be '# expect: <line>: <field>: <message>'"
    line = int(expect["line"])
    field = "" if expect["field"] == "-" else expect["field"]

    relative = path.relative_to(ROOT)
    with pytest.raises(ConfigError) as caught:
        load_lab(relative)

    # One problem per file keeps each case about exactly one rule.
    assert len(caught.value.errors) == 1, str(caught.value)
    problem = caught.value.errors[0]
    assert (problem.line, problem.field) == (line, field), str(caught.value)
    assert expect["message"] in problem.message
    text = str(caught.value)
    assert text.startswith(f"{relative}:{line}:")
    assert field in text and expect["message"] in text


# --------------------------------------------------------------------------- good configs


def test_default_config_resolves() -> None:
    lab = load_lab(DEFAULT_CONFIG)
    assert lab.lab == "default" and lab.image == "default"
    assert [(n.name, n.vcpus, n.memory_mib) for n in lab.nodes] == [("a", 1, 512), ("b", 1, 512)]
    (link,) = lab.links
    assert (link.name, link.endpoints, link.model, link.mtu) == ("a-b", ["a", "b"], "e1000", 1500)
    assert link.addresses == [IPv4Interface("198.18.1.1/24"), IPv4Interface("198.18.1.2/24")]
    assert lab.link_between("b", "a") is link
    summary = {
        e.name: (e.type, e.path, e.client, e.server, e.link, e.duration_s) for e in lab.experiments
    }
    assert summary == {
        "kernel-stream": ("stream", "kernel", "a", "b", "a-b", 10.0),
        "kernel-rr": ("rr", "kernel", "a", "b", "a-b", 5.0),
        "floor-stream": ("stream", "floor", "a", "b", "a-b", 10.0),
        "floor-rr": ("rr", "floor", "a", "b", "a-b", 5.0),
        "mono-stream": ("stream", "mono", "a", "b", "a-b", 10.0),
        "mono-rr": ("rr", "mono", "a", "b", "a-b", 5.0),
        "factored-stream": ("stream", "factored", "a", "b", "a-b", 10.0),
        "factored-rr": ("rr", "factored", "a", "b", "a-b", 5.0),
        "factored-shared-stream": ("stream", "factored", "a", "b", "a-b", 10.0),
        "factored-shared-rr": ("rr", "factored", "a", "b", "a-b", 5.0),
        "factored-copy-stream": ("stream", "factored", "a", "b", "a-b", 10.0),
        "factored-copy-rr": ("rr", "factored", "a", "b", "a-b", 5.0),
        "iperf3": ("iperf3", "kernel", "a", "b", "a-b", 10.0),
        "ping": ("ping", "kernel", "a", "b", "a-b", 3.0),
    }
    rr = lab.experiment("kernel-rr")
    assert (rr.req_size, rr.resp_size, rr.msg_size) == (64, 64, None)
    links = {e.name: e.stack.link for e in lab.experiments if e.path == "factored"}
    assert links == {
        "factored-stream": "uring",
        "factored-rr": "uring",
        "factored-shared-stream": "shared",
        "factored-shared-rr": "shared",
        "factored-copy-stream": "copy",
        "factored-copy-rr": "copy",
    }
    assert lab.experiment("kernel-stream").msg_size == 65536


def test_chain_config_runs_every_experiment_from_a_to_b_through_m() -> None:
    lab = load_lab(ROOT / "configs" / "chain.yaml")
    assert [n.name for n in lab.nodes] == ["a", "m", "b"] and lab.routing == "static"
    assert lab.routes().forwarding == {"m"}
    paths = {lab.path_of(e).nodes for e in lab.experiments}
    assert paths == {("a", "m", "b")}
    assert {e.path for e in lab.experiments} == {"kernel", "mono", "factored"}
    assert {e.type for e in lab.experiments} == {"stream", "rr", "iperf3", "ping"}


def test_the_lab_file_takes_the_factored_stacks_boundaries_from_its_registry() -> None:
    """`stack: {link: ...}` accepts exactly the guest's boundaries, defaulting to its first."""
    assert StackOptions().link == DEFAULT_BOUNDARY == next(iter(BOUNDARIES))
    for name in BOUNDARIES:
        assert StackOptions(link=name).link == name
    with pytest.raises(ValidationError, match="link 'tcp' is not one of uring, shared, copy"):
        StackOptions(link="tcp")


def test_to_dict_is_json_and_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    data = json.loads(json.dumps(load_lab("configs/default.yaml").to_dict()))
    assert data["source_path"] == "configs/default.yaml"
    assert data["links"][0]["addresses"] == ["198.18.1.1/24", "198.18.1.2/24"]
    assert data["nodes"][1] == {"name": "b", "vcpus": 1, "memory_mib": 512, "cpuset": None}
    assert data["experiments"][0]["link"] == "a-b"


@pytest.mark.parametrize("path", sorted(GOOD_DIR.glob("*.yaml")), ids=lambda path: path.stem)
def test_good_configs_load(path: Path) -> None:
    assert isinstance(load_lab(path), LabConfig)


def test_full_fixture_resolution() -> None:
    lab = load_lab(GOOD_DIR / "full.yaml")
    assert [(n.vcpus, n.memory_mib) for n in lab.nodes] == [
        (2, 1024),
        (4, 1024),
        (2, 2048),
        (2, 2048),
    ]
    assert lab.node("r4").memory_mib == 2048  # from a YAML merge key, not a duplicate key
    assert lab.link_between("r2", "r1").name == "fast"  # first of two links between them
    assert lab.experiment("rr-second-link").link == "r1-r2"
    assert lab.link("r1-r2").address_of("r2") == IPv4Interface("198.19.0.2/24")
    assert lab.experiment("3-iperf").link == "r2-r3"
    assert lab.link_between("r1", "r4") is None
    with pytest.raises(KeyError, match="no node 'zz'"):
        lab.node("zz")


def test_source_path_kept_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "lab: t\nnodes: [{name: a}]\nbogus: 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_lab("lab.yaml")
    assert str(caught.value) == (
        "lab.yaml:3: bogus: unknown field 'bogus'; allowed: "
        "lab, image, description, defaults, nodes, links, routing, experiments"
    )


def test_experiments_across_hops_follow_the_routes() -> None:
    """Nodes with no link of their own talk through the lab's routes: such an experiment has
    no link, and its path runs to the server's address on the last hop."""
    lab = load_lab(GOOD_DIR / "chain_routed.yaml")
    assert lab.routing == "static"
    paths = {e.name: (lab.path_of(e).nodes, lab.path_of(e).links, e.link) for e in lab.experiments}
    assert paths == {
        "near": (("a", "m"), ("a-m",), "a-m"),
        "two-hops": (("a", "m", "n"), ("a-m", "m-n"), None),
        "three-hops": (("a", "m", "n", "b"), ("a-m", "m-n", "n-b"), None),
        "branch": (("c", "m", "n", "b"), ("m-c", "m-n", "n-b"), None),
    }
    routes = lab.routes()
    assert routes.forwarding == {"m", "n"}
    assert [r.subnet for r in routes.routes["a"]] == [
        "198.18.2.0/24",
        "198.18.3.0/24",
        "198.18.4.0/24",
    ]


def test_routing_none_keeps_neighbours_talking(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        lab: t
        routing: none
        nodes: [{name: a}, {name: b}]
        links: [{endpoints: [a, b]}]
        experiments: [{name: p, type: ping, client: a, server: b}]
        """,
    )
    lab = load_lab(path)
    assert lab.routes().routes == {"a": [], "b": []}
    assert lab.path_of(lab.experiment("p")).nodes == ("a", "b")


def test_source_path_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "lab: t\nnodes: [{name: a}]\n")
    monkeypatch.chdir(tmp_path)
    assert load_lab("lab.yaml").source_path == "lab.yaml"
    assert load_lab(Path("lab.yaml")).to_dict()["source_path"] == "lab.yaml"


# --------------------------------------------------------------------------- behaviour


def test_default_address_allocation_follows_list_index(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        lab: t
        nodes: [{name: a}, {name: b}, {name: c}]
        links:
          - endpoints: [a, b]
          - endpoints: [b, c]
            addresses: [198.18.50.1/24, 198.18.50.2/24]
          - endpoints: [c, a]
        """,
    )
    lab = load_lab(path)
    assert [[str(a) for a in link.addresses or []] for link in lab.links] == [
        ["198.18.1.1/24", "198.18.1.2/24"],
        ["198.18.50.1/24", "198.18.50.2/24"],
        ["198.18.3.1/24", "198.18.3.2/24"],
    ]
    # Endpoint order decides who gets .1: c is the first endpoint of the third link.
    assert lab.link("c-a").address_of("c") == IPv4Interface("198.18.3.1/24")


def test_explicit_address_colliding_with_default_is_an_overlap(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        lab: t
        nodes: [{name: a}, {name: b}, {name: c}]
        links:
          - endpoints: [a, b]
            addresses: [198.18.2.1/24, 198.18.2.2/24]
          - endpoints: [b, c]
        """,
    )
    (problem,) = problems_of(path)
    # links[1] has no addresses key, so the problem points at the link item itself.
    assert (problem.line, problem.field) == (6, "links[1].addresses")
    assert "overlaps links[0]" in problem.message


def test_several_schema_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        lab: Bad_Name
        nodes:
          - name: a
            vcpus: 99
          - name: b
            memory_mib: lots
        links:
          - endpoints: [a, b]
            mtu: 10
        """,
    )
    problems = problems_of(path)
    assert [(p.line, p.field) for p in problems] == [
        (1, "lab"),
        (4, "nodes[0].vcpus"),
        (6, "nodes[1].memory_mib"),
        (9, "links[0].mtu"),
    ]
    assert all(p.file == str(path) for p in problems)


def test_several_cross_reference_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        lab: t
        nodes:
          - name: a
          - name: a
        links:
          - endpoints: [a, ghost]
        experiments:
          - name: e
            type: ping
            client: a
            server: nobody
        """,
    )
    problems = problems_of(path)
    assert [(p.line, p.field) for p in problems] == [
        (4, "nodes[1].name"),
        (6, "links[0].endpoints[1]"),
        (11, "experiments[0].server"),
    ]


def test_config_error_text_is_one_line_per_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "lab: t\nnodes:\n  - {name: a, vcpus: 0}\n  - {name: b, vcpus: 9}\n")
    with pytest.raises(ConfigError) as caught:
        load_lab(path)
    lines = str(caught.value).splitlines()
    assert lines == [str(p) for p in caught.value.errors]
    assert lines == [
        f"{path}:3: nodes[0].vcpus: Input should be greater than or equal to 1",
        f"{path}:4: nodes[1].vcpus: Input should be less than or equal to 8",
    ]


def test_nested_list_item_line_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        lab: t
        nodes: [{name: a}, {name: b}]
        links:
          - endpoints:
              - a
              - b
            addresses:
              - 198.18.7.1/24

              - 198.18.8.2/33
        experiments:
          - name: one
            type: ping
            client: a
            server: b
          - name: two
            type: stream
            client: a
            server: b
            duration_s: -1
        """,
    )
    problems = problems_of(path)
    assert [(p.line, p.field) for p in problems] == [
        (10, "links[0].addresses[1]"),
        (20, "experiments[1].duration_s"),
    ]


def test_missing_field_points_at_its_list_item(tmp_path: Path) -> None:
    path = write(tmp_path, "lab: t\nnodes:\n  - name: a\n  - vcpus: 2\n")
    (problem,) = problems_of(path)
    assert (problem.line, problem.field, problem.message) == (4, "nodes[1].name", "Field required")


def test_duplicate_key_and_its_value_error_both_point_at_the_last_key(tmp_path: Path) -> None:
    # PyYAML keeps the last value, so a bad last value must be reported at the last line.
    path = write(tmp_path, 'lab: t\nnodes:\n  - name: a\n    vcpus: 1\n    vcpus: "x"\n')
    problems = problems_of(path)
    assert [(p.line, p.field) for p in problems] == [(5, "nodes[0].vcpus")] * 2
    assert "duplicate key 'vcpus' (first at line 4)" in problems[0].message


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "lab: t\nnodes:\n  - name: a\n bad: [\n")
    (problem,) = problems_of(path)
    assert problem.field == "" and problem.line is not None and problem.column is not None
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+:\d+: YAML syntax error: .+", str(problem))


def test_scalar_top_level_is_rejected(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "just a string\n"))
    assert (problem.line, problem.field) == (1, "")
    assert "top level must be a mapping" in problem.message


def test_zero_byte_file_is_empty_error(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, ""))
    assert (problem.line, problem.message.startswith("file is empty")) == (1, True)


def test_unreadable_file(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert problem.line is None and "cannot read lab file" in problem.message


def test_allowed_paths_is_the_single_source_of_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = """
    lab: t
    nodes: [{name: a}, {name: b}]
    links: [{endpoints: [a, b]}]
    experiments: [{name: m, type: stream, path: factored, client: a, server: b}]
    """
    assert ALLOWED_PATHS == ("kernel", "mono", "factored", "floor")
    assert parse_lab(textwrap.dedent(text)).experiment("m").path == "factored"
    monkeypatch.setattr(config_module, "ALLOWED_PATHS", ("kernel", "mono"))
    with pytest.raises(ConfigError, match="path 'factored' is not allowed"):
        parse_lab(textwrap.dedent(text))


def test_experiment_type_specific_defaults() -> None:
    lab = parse_lab(
        textwrap.dedent(
            """
            lab: t
            nodes: [{name: a}, {name: b}]
            links: [{endpoints: [a, b]}]
            experiments:
              - {name: s, type: stream, client: a, server: b}
              - {name: r, type: rr, client: a, server: b, req_size: 1}
              - {name: p, type: ping, client: a, server: b}
            """
        )
    )
    sizes = [(e.msg_size, e.req_size, e.resp_size) for e in lab.experiments]
    assert sizes == [(65536, None, None), (None, 1, 64), (None, None, None)]


def test_yaml_boolean_as_name_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match="quote it") as caught:
        parse_lab("lab: t\nnodes:\n  - name: no\n")
    assert caught.value.errors[0].field == "nodes[0].name"


def test_client_equal_server_is_rejected_at_server() -> None:
    text = "lab: t\nnodes: [{name: a}]\nexperiments:\n"
    text += "  - {name: e, type: ping, client: a, server: a}\n"
    with pytest.raises(ConfigError) as caught:
        parse_lab(text, "inline.yaml")
    assert str(caught.value) == (
        "inline.yaml:4: experiments[0].server: client and server must be different nodes; "
        "both are 'a'"
    )


def test_capture_on_an_experiment_takes_true_or_bounds() -> None:
    base = """
    lab: t
    nodes: [{name: a}, {name: b}]
    links: [{endpoints: [a, b]}]
    experiments: [{name: m, type: stream, client: a, server: b, capture: CAPTURE}]
    """

    def capture(value: str):
        return parse_lab(textwrap.dedent(base).replace("CAPTURE", value)).experiments[0].capture

    assert capture("false") is None
    assert capture("true").model_dump() == {"max_bytes": 64 * 1024 * 1024, "snaplen": 65535}
    assert capture("{snaplen: 128}").snaplen == 128
    with pytest.raises(ConfigError, match=r"capture\.snaplen: Input should be greater than"):
        capture("{snaplen: 10}")
    with pytest.raises(ConfigError, match=r"capture\.max_bytes: Input should be a number"):
        capture("{max_bytes: yes}")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("stack: {devic: x}, path: mono", "stack.devic: unknown field 'devic' (did you mean"),
        ("capture: {snaplenn: 9}", "allowed: max_bytes, snaplen"),
        ("impair: {a-b: {delai: 1ms}}", "allowed: delay, jitter, loss"),
        ("bogus: 1", "allowed: name, type, path, client, server"),
    ],
)
def test_an_unknown_key_lists_what_is_allowed_where_it_stands(entry: str, expected: str) -> None:
    text = f"""
    lab: t
    nodes: [{{name: a}}, {{name: b}}]
    links: [{{endpoints: [a, b]}}]
    experiments: [{{name: m, type: stream, client: a, server: b, {entry}}}]
    """
    with pytest.raises(ConfigError) as info:
        parse_lab(textwrap.dedent(text))
    assert expected in str(info.value)

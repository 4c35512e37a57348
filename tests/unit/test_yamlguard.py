"""Lab files built to be expensive to load are refused, with the line where, not expanded.

The timeouts guard against a hang (the alias bomb below took 20 s before the guard); they
are not speed targets.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from host.config import ConfigError, load_lab, parse_lab
from host.yamlguard import MAX_BYTES, MAX_DEPTH, MAX_VALUES

GOOD = """
lab: t
nodes: [{name: a}, {name: b}]
links: [{endpoints: [a, b]}]
"""


def alias_bomb(levels: int) -> str:
    """Each level a list of ten aliases of the level below: 10**levels values expanded."""
    lines = ["lab: t", "nodes: [{name: a}, {name: b}]", "x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    for level in range(1, levels):
        lines.append(f"x{level}: &x{level} [{', '.join([f'*x{level - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(30)
def test_an_alias_bomb_is_refused_at_the_line_it_explodes() -> None:
    with pytest.raises(ConfigError) as info:
        parse_lab(alias_bomb(9), "bomb.yaml")
    (problem,) = info.value.errors
    # 10**5 + ... crosses MAX_VALUES at x4 (10**5 values), on the file's seventh line.
    assert MAX_VALUES == 100_000
    assert (problem.line, problem.field) == (7, "")
    assert "expands to more than 100000 values" in problem.message


def test_aliases_used_a_few_times_are_fine() -> None:
    text = textwrap.dedent(
        """
        lab: t
        nodes: [{name: a}, {name: b}]
        links: [{endpoints: [a, b]}]
        experiments:
          - &s {name: s1, type: stream, client: a, server: b}
          - {<<: *s, name: s2}
          - {<<: *s, name: s3, path: mono}
        """
    )
    lab = parse_lab(text, "ok.yaml")
    assert [e.name for e in lab.experiments] == ["s1", "s2", "s3"]


@pytest.mark.timeout(30)
def test_deep_nesting_is_refused_at_the_line_it_gets_too_deep() -> None:
    depth = 5000  # far past what PyYAML's recursive composer survives
    text = "lab: t\nnodes: " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(ConfigError) as info:
        parse_lab(text, "deep.yaml")
    (problem,) = info.value.errors
    assert problem.line == 2
    assert f"nest more than {MAX_DEPTH} levels" in problem.message


def test_an_alias_that_contains_itself_is_refused() -> None:
    with pytest.raises(ConfigError, match="refers to a collection that contains it"):
        parse_lab("lab: t\nnodes: &n [{name: a}, *n]\n", "loop.yaml")


@pytest.mark.timeout(30)
def test_an_enormous_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.write(GOOD)
        f.write("# padding\n" * (MAX_BYTES // 10 * 4))  # four times the limit
    with pytest.raises(ConfigError, match=f"lab files are limited to {MAX_BYTES} bytes"):
        load_lab(path)


def test_the_reference_lab_files_pass() -> None:
    for path in Path(__file__).resolve().parents[2].glob("configs/*.yaml"):
        load_lab(path)

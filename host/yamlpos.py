"""Where in a YAML file a problem is: `file:line: field.path: message` for every error.

A general locator, knowing nothing of what the file describes. The document is *composed*
(parsed to nodes that carry source marks), a map from field path (keys and list indices) to
line is built from the node tree, reporting duplicate mapping keys on the way (PyYAML would
otherwise silently keep the last), then the plain data is constructed. A validator's error
location (a pydantic ``loc``, or any path of keys and indices) is mapped to the line of the
deepest path present in the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from host.yamlguard import TooExpensive, check_expansion, check_length, check_nesting

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "LineMap",
    "Loc",
    "compose",
    "format_loc",
    "in_file_order",
    "line_for",
    "locate",
]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a YAML file, located precisely enough for an editor to jump to.

    ``line`` is 1-based (None when the file could not be read at all); ``column`` is only
    set for YAML syntax errors, where the parser knows it; ``field`` is a path such as
    ``nodes[1].vcpus`` or empty for problems with the file as a whole.
    """

    file: str
    line: int | None
    field: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(Exception):
    """Every problem found in a file (e.g. by :func:`host.config.load_lab`), one per line in
    ``str()``."""

    def __init__(self, errors: list[ConfigProblem]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(problem) for problem in errors))


class LineMap:
    """Walk a composed YAML node tree, recording the line of every field path and
    reporting duplicate mapping keys (which PyYAML would otherwise silently overwrite)."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.duplicates: list[tuple[Loc, int, str]] = []
        self._keys = SafeConstructor()
        self._active: set[int] = set()

    def walk(self, node: Node, path: Loc, line: int) -> None:
        self.lines[path] = line
        if id(node) in self._active:  # recursive alias: stop rather than loop forever
            return
        self._active.add(id(node))
        if isinstance(node, MappingNode):
            self._walk_mapping(node, path)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*path, index), item.start_mark.line + 1)
        self._active.discard(id(node))

    def _walk_mapping(self, node: MappingNode, path: Loc) -> None:
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys are legitimately overridden; no line of their own
            key = self._key(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append(
                    ((*path, key), line, f"duplicate key {key!r} (first at line {seen[key]})")
                )
            seen.setdefault(key, line)
            # PyYAML keeps the last value, so validation errors must point at the last one.
            self.walk(value_node, (*path, key), line)

    def duplicate_problems(self, file: str) -> list[ConfigProblem]:
        """The duplicate keys found by the walk, as problems in ``file``."""
        return [
            ConfigProblem(file, line, format_loc(loc), msg) for loc, line, msg in self.duplicates
        ]

    def _key(self, node: Node) -> Any:
        """A hashable identity for a key node; '1' and 1 are different keys in YAML."""
        if isinstance(node, ScalarNode):
            value = self._keys.construct_object(node)
            return value if isinstance(value, str | int) else f"{value}"
        return f"<{node.id} at line {node.start_mark.line + 1}>"


def _yaml_problem(file: str, exc: yaml.YAMLError) -> ConfigProblem:
    """Turn a PyYAML exception into a file:line:col problem."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ConfigProblem(file, None, "", f"YAML error: {exc}")
    label = (
        "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
    )
    message = f"{label}: {exc.problem}"
    if exc.context:
        at = f", line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message += f" ({exc.context}{at})"
    mark = exc.problem_mark
    return ConfigProblem(file, mark.line + 1, "", message, column=mark.column + 1)


def compose(file: str, text: str, *, empty_message: str, mapping_hint: str) -> tuple[Any, LineMap]:
    """Parse to data plus line map; raise ConfigError if there is no usable mapping, or if
    the text would be expensive to load (`host.yamlguard`).

    ``empty_message`` is the problem an empty file gets; ``mapping_hint`` names the keys the
    top-level mapping should have, for a file whose top level is something else."""
    loader = yaml.SafeLoader(text)
    try:
        check_length(len(text.encode()))
        check_nesting(text)
        root = loader.get_single_node()
        if root is None:
            raise ConfigError([ConfigProblem(file, 1, "", empty_message)])
        if not isinstance(root, MappingNode):
            kind = "a list" if isinstance(root, SequenceNode) else f"the scalar {root.value!r}"
            raise ConfigError(
                [
                    ConfigProblem(
                        file,
                        root.start_mark.line + 1,
                        "",
                        f"the top level must be a mapping ({mapping_hint}), not {kind}",
                    )
                ]
            )
        check_expansion(root)
        lines = LineMap()
        lines.walk(root, (), root.start_mark.line + 1)
        return loader.construct_document(root), lines
    except TooExpensive as exc:
        raise ConfigError([ConfigProblem(file, exc.line, "", f"refused: {exc}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(file, exc)]) from exc
    finally:
        loader.dispose()


def format_loc(loc: Loc) -> str:
    """('nodes', 1, 'vcpus') -> 'nodes[1].vcpus'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def line_for(loc: Loc, lines: dict[Loc, int]) -> int:
    """The line of the deepest prefix of ``loc`` present in the file (missing fields and
    defaulted values have no line of their own, so they point at their parent)."""
    for depth in range(len(loc), -1, -1):
        if loc[:depth] in lines:
            return lines[loc[:depth]]
    return 1


def locate(file: str, loc: Loc, message: str, lines: dict[Loc, int]) -> ConfigProblem:
    """The problem at field path ``loc``, on the line ``lines`` gives it."""
    return ConfigProblem(file, line_for(loc, lines), format_loc(loc), message)


def in_file_order(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """File order, so the report reads top to bottom like the file."""
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.field))

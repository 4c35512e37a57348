"""Refuse a YAML file that would be expensive to load, before it is loaded.

A lab file is a few kilobytes, a few levels deep, and every value in it is written once or
referred to through an alias a few times. A file built otherwise costs time out of all
proportion to its length: aliases that refer to aliases expand exponentially (the "billion
laughs": 80 lines took 20 s to check here before this guard), and nesting thousands of
levels deep exhausts the recursion of PyYAML's composer. So the text is measured first, each
measure in time linear in the file's length and without recursion, and a file over a bound
is refused with the line where it crossed it:

* `MAX_BYTES`: the file's length (checked before reading, where the caller can);
* `MAX_DEPTH`: how deeply collections nest (from the parser's events, which are not recursive);
* `MAX_VALUES`: how many values the document holds once its aliases are expanded (computed
  on the composed node graph, each node counted once, with the sizes of shared nodes reused).
"""

from __future__ import annotations

from typing import Final

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

#: Far above any lab file (the reference lab file is ~8 KiB), far below what is slow to parse.
MAX_BYTES: Final = 256 * 1024
#: A lab file nests 4 levels (experiments -> entry -> stack -> field).
MAX_DEPTH: Final = 32
#: Values (scalars and collections) once aliases are expanded.
MAX_VALUES: Final = 100_000


class TooExpensive(Exception):
    """The file crosses one of the bounds; ``line`` (1-based) says where, when known."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line


def check_length(size: int) -> None:
    if size > MAX_BYTES:
        raise TooExpensive(
            None, f"the file is {size} bytes; lab files are limited to {MAX_BYTES} bytes"
        )


def check_nesting(text: str) -> None:
    """Raise TooExpensive where collections nest deeper than `MAX_DEPTH`."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise TooExpensive(
                    event.start_mark.line + 1,
                    f"collections nest more than {MAX_DEPTH} levels deep here",
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: Node) -> None:
    """Raise TooExpensive if the document, its aliases expanded, holds more than `MAX_VALUES`
    values, or if an alias refers to a collection that contains it (it would never end)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_VALUES:
                raise TooExpensive(
                    node.start_mark.line + 1,
                    f"through its aliases, this value expands to more than {MAX_VALUES} "
                    "values (refused rather than expanded)",
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue  # a shared node (an alias): its size is known already
        if key in on_path:
            raise TooExpensive(
                node.start_mark.line + 1, "an alias here refers to a collection that contains it"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(_children(node)))

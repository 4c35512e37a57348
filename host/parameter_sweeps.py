"""Parameter sweeps in lab files: one experiment entry, several values of one parameter.

    - name: mono-stream
      type: stream
      path: mono
      baseline: kernel-stream
      sweep: {msg_size: [1448, 8192, 65536]}

expands, before validation, into one experiment per value, named `NAME.PARAM-VALUE`
(`mono-stream.msg_size-1448`), each with the parameter set. A `baseline:` that is swept over
the same parameter and value is followed to its matching member, so each point is compared
with its own counterpart. Each member records its point (`ExperimentConfig.sweep_point`),
so the report can draw the figure against the parameter. Errors in a member are reported
at the entry's `sweep:` in the file, never at a line that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: What a sweep may vary besides a type's own options: how long each run lasts, and the MTU
#: of the links the experiment crosses.
COMMON = ("duration_s", "mtu")
MAX_VALUES = 16

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Origin:
    """Where an expanded entry came from: the entry's index in the file, and for a sweep's
    member, the parameter and the value's index in the list."""

    index: int
    parameter: str | None = None
    position: int | None = None
    family: str | None = None
    value: Any = None

    def point(self) -> dict | None:
        """A member's sweep point, as results record it; None for an entry not swept."""
        if self.parameter is None:
            return None
        return {"family": self.family, "parameter": self.parameter, "value": self.value}


def member_name(name: str, parameter: str, value: Any) -> str:
    return f"{name}.{parameter}-{value}"


def _problems(entry: dict, index: int, sweepable: tuple[str, ...]) -> list[tuple[Loc, str]]:
    sweep = entry["sweep"]
    here: Loc = ("experiments", index, "sweep")
    if not isinstance(sweep, dict) or len(sweep) != 1:
        return [(here, "a sweep is one parameter and its values: {PARAM: [V1, V2, ...]}")]
    ((parameter, values),) = sweep.items()
    if parameter not in sweepable:
        return [(here, f"cannot sweep {parameter!r}; sweepable: {', '.join(sweepable)}")]
    if parameter in entry:
        return [((*here, parameter), f"{parameter} is both set and swept; keep one")]
    if not isinstance(values, list) or not 2 <= len(values) <= MAX_VALUES:
        return [((*here, parameter), f"a list of 2 to {MAX_VALUES} values")]
    if any(not isinstance(v, int | float) or isinstance(v, bool) for v in values):
        return [((*here, parameter), "the values of a sweep are numbers")]
    if len(set(values)) != len(values):
        return [((*here, parameter), "a value is listed twice")]
    return []


def expand(
    data: Any, sweepable: tuple[str, ...]
) -> tuple[Any, dict[int, Origin], list[tuple[Loc, str]]]:
    """The lab data with each swept entry replaced by its members, where each entry came
    from, and the problems of the sweeps themselves (data unchanged if there are any)."""
    experiments = data.get("experiments") if isinstance(data, dict) else None
    if not isinstance(experiments, list):
        return data, {}, []
    problems: list[tuple[Loc, str]] = []
    swept: dict[str, tuple[str, list]] = {}
    for i, entry in enumerate(experiments):
        if isinstance(entry, dict) and "sweep" in entry:
            found = _problems(entry, i, sweepable)
            problems += found
            if not found:
                ((parameter, values),) = entry["sweep"].items()
                swept[str(entry.get("name"))] = (parameter, values)
    if problems or not swept:
        return data, {i: Origin(i) for i in range(len(experiments))}, problems
    out: list[Any] = []
    origins: dict[int, Origin] = {}
    for i, entry in enumerate(experiments):
        if not (isinstance(entry, dict) and "sweep" in entry):
            origins[len(out)] = Origin(i)
            out.append(entry)
            continue
        parameter, values = swept[str(entry.get("name"))]
        base = entry.get("baseline")
        for k, value in enumerate(values):
            member = {key: v for key, v in entry.items() if key != "sweep"}
            member["name"] = member_name(str(entry.get("name")), parameter, value)
            member[parameter] = value
            if base in swept and swept[base][0] == parameter and value in swept[base][1]:
                member["baseline"] = member_name(base, parameter, value)
            origins[len(out)] = Origin(i, parameter, k, str(entry.get("name")), value)
            out.append(member)
    return {**data, "experiments": out}, origins, []


def origin_loc(loc: Loc, origins: dict[int, Origin]) -> Loc:
    """An error's field path in the expanded data, as a path in the file: a member's swept
    parameter points at its value in `sweep:`, its other fields at the entry's own."""
    if len(loc) < 2 or loc[0] != "experiments" or not isinstance(loc[1], int):
        return loc
    origin = origins.get(loc[1])
    if origin is None:
        return loc
    rest = loc[2:]
    if origin.parameter is not None and rest and rest[0] == origin.parameter:
        return ("experiments", origin.index, "sweep", origin.parameter, origin.position or 0)
    if origin.parameter is not None and rest and rest[0] == "name":
        return ("experiments", origin.index, "sweep")
    return ("experiments", origin.index, *rest)

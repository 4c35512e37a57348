"""Link impairments: the lab file's `impair:` (delay, jitter, loss, ...) and its netem form.

A link's impairments are applied at bring-up with `tc qdisc replace dev NIC root netem ...` on
each sending endpoint's NIC for that link: a direction is the egress of its sender. The fields
right on `impair:` hold for both directions; `from: {NODE: {...}}` overrides them, field by
field, for what NODE sends. Values keep their units as written (normalised: `10ms`, `2%`,
`100mbit`), which is also how tc reads them, so the netem arguments are the values themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from host.fields import NodeName

__all__ = ["DIRECTION_FIELDS", "LinkImpair", "Netem", "clear_command", "netem_command", "problems"]


def _quantity(
    kind: str, units: dict[str, float], example: str, top: float, top_text: str
) -> Callable[[Any], str]:
    """A validator turning '10 ms' into '10ms': a number with one of `units` (each unit's
    size in a common base), not negative, at most `top` (in that base)."""
    pattern = re.compile(r"(-?\d+(?:\.\d+)?)\s*([a-z%]*)")

    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"a {kind} is written with its unit, e.g. {example}")
        text = str(value).strip().lower()
        found = pattern.fullmatch(text)
        if found is None:
            raise ValueError(f"{value!r} is not a {kind}; write it like {example}")
        number, unit = float(found[1]), found[2]
        allowed = ", ".join(units)
        if not unit:
            raise ValueError(f"{value!r} has no unit; a {kind} takes {allowed} (e.g. {example})")
        if unit not in units:
            raise ValueError(f"unknown unit {unit!r} in {value!r}; a {kind} takes {allowed}")
        if number < 0:
            raise ValueError(f"{value!r}: a {kind} cannot be negative")
        if number * units[unit] > top:
            raise ValueError(f"{value!r}: a {kind} of at most {top_text} is allowed")
        return f"{number:g}{unit}"

    return check


Duration = Annotated[
    str, BeforeValidator(_quantity("duration", {"us": 1, "ms": 1e3, "s": 1e6}, "10ms", 1e7, "10s"))
]
Percent = Annotated[str, BeforeValidator(_quantity("percentage", {"%": 1}, "2%", 100, "100%"))]
Rate = Annotated[
    str,
    BeforeValidator(
        _quantity(
            "rate",
            {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9},
            "100mbit",
            1e11,
            "100gbit",
        )
    ),
]

#: netem's parameters in the order its command line takes them (jitter follows delay).
DIRECTION_FIELDS = ("delay", "jitter", "loss", "duplicate", "reorder", "corrupt", "rate")


class Netem(BaseModel):
    """What one direction of a link suffers; every field optional."""

    model_config = ConfigDict(extra="forbid")

    delay: Duration | None = None
    jitter: Duration | None = None
    loss: Percent | None = None
    duplicate: Percent | None = None
    reorder: Percent | None = None
    corrupt: Percent | None = None
    rate: Rate | None = None

    def given(self) -> dict[str, str]:
        """The fields set, in netem's order: what `lab.status` and results show."""
        return {k: v for k in DIRECTION_FIELDS if (v := getattr(self, k)) is not None}

    def args(self) -> str:
        """netem's arguments (`delay 10ms 1ms loss 2% ...`); empty when nothing is set."""
        given = self.given()
        words = []
        if "delay" in given:
            words += ["delay", given["delay"], *([given["jitter"]] if "jitter" in given else [])]
        words += [f"{k} {v}" for k, v in given.items() if k not in ("delay", "jitter")]
        return " ".join(words)


def problems(impair: LinkImpair) -> Iterator[tuple[tuple[str, ...], str]]:
    """What netem could not do, each with its field's path inside `impair:`: jitter is added
    to a delay, and reordering sends some packets without the delay the others get."""
    senders = [((), impair, "")] + [
        (("from", sender), impair.direction(sender), f" (from {sender})") for sender in impair.from_
    ]
    for where, netem, who in senders:
        delayed = netem.delay is not None and float(re.sub(r"[a-z]+$", "", netem.delay)) > 0
        for name in ("jitter", "reorder"):
            if getattr(netem, name) is not None and not delayed:
                yield (
                    (*where, name),
                    f"{name}{who} needs a delay greater than 0 (netem {name}s delayed "
                    "packets); add e.g. delay: 10ms",
                )


class LinkImpair(Netem):
    """A link's `impair:`: fields for both directions, `from: {NODE: {...}}` per sender."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    from_: dict[NodeName, Netem] = Field(default_factory=dict, alias="from")

    def direction(self, sender: str) -> Netem:
        """What `sender` sends through: the link's fields, overridden by `from[sender]`'s."""
        both = {k: getattr(self, k) for k in DIRECTION_FIELDS}
        mine = self.from_.get(sender)
        if mine is not None:
            both.update({k: getattr(mine, k) for k in mine.model_fields_set})
        return Netem.model_construct(**both)


def netem_command(dev: str, netem: Netem) -> str:
    """The shell command that puts `netem` on `dev`'s egress, or clears it if nothing is set."""
    args = netem.args()
    if not args:
        return clear_command(dev)
    return f"tc qdisc replace dev {dev} root netem {args}"


def clear_command(dev: str) -> str:
    """Back to the device's default qdisc (deleting a root that is already default fails)."""
    return f"{{ tc qdisc del dev {dev} root 2>/dev/null || true; }}"

"""The congestion controllers a connection may use, by the name a user gives (`--cc`).

One registry, as for the stack's devices and the factored stack's boundaries: the command
lines, the lab files and the results all take their choices from here.
"""

from __future__ import annotations

from .congestion import NewReno
from .cubic import Cubic

CONGESTION_CONTROLS: dict[str, type[NewReno]] = {c.name: c for c in (NewReno, Cubic)}
#: RFC 5681/6582, the stack's controller before CUBIC existed, so earlier results compare.
DEFAULT_CC = NewReno.name

"""The experiment types a lab file may name, one module each (see `base.ExperimentType`).

A new type is a new module exposing `TYPE`, listed here; host.config (the lab file's
`type:` and options), host.bench (the runner) and host.report (columns, baseline figure,
plot) take everything else from it. The order is the lab file's documented order.
"""

from __future__ import annotations

from host.experiments import iperf3, ping, rr, stream, transfer
from host.experiments.base import BenchError, ExperimentType, Option, Target

__all__ = ["EXPERIMENT_TYPES", "BenchError", "ExperimentType", "Target", "options"]

EXPERIMENT_TYPES: dict[str, ExperimentType] = {
    module.TYPE.name: module.TYPE for module in (stream, rr, iperf3, ping, transfer)
}


def options() -> dict[str, tuple[Option, tuple[str, ...]]]:
    """Every type-specific option: its definition and the types that take it, in order.

    Types sharing an option must agree on its definition (one field in the lab file)."""
    out: dict[str, tuple[Option, tuple[str, ...]]] = {}
    for kind in EXPERIMENT_TYPES.values():
        for name, option in kind.options.items():
            first, owners = out.get(name, (option, ()))
            if first != option:
                raise TypeError(
                    f"experiment types {owners[0]} and {kind.name}: option {name} differs"
                )
            out[name] = (first, (*owners, kind.name))
    return out

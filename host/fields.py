"""Field types shared by the lab file's schema (host.config) and the experiment types'
config fragments (host.experiments): names, and numbers that refuse YAML's booleans.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator


def matches(regex: str, rule: str) -> Callable[[str], str]:
    """Build a validator with a readable message; pydantic's default just dumps the regex."""
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid name: {rule}")
        return value

    return check


def _reject_bool(value: Any) -> Any:
    """YAML turns yes/no/on/off into booleans, and pydantic would then accept them as 1/0."""
    if isinstance(value, bool):
        raise ValueError(
            f"Input should be a number, not the boolean {str(value).lower()} "
            "(YAML reads yes/no/on/off/true/false as booleans)"
        )
    return value


#: Put before a number's constraints: refuses true/false rather than reading them as 1/0.
NO_BOOL = BeforeValidator(_reject_bool)


LabName = Annotated[
    str, AfterValidator(matches(r"[a-z][a-z0-9-]{0,23}", "1-24 of a-z 0-9 -, starting a-z"))
]
NodeName = Annotated[
    str, AfterValidator(matches(r"[a-z][a-z0-9-]{0,15}", "1-16 of a-z 0-9 -, starting a-z"))
]
LinkName = Annotated[
    str, AfterValidator(matches(r"[a-z][a-z0-9-]{0,32}", "1-33 of a-z 0-9 -, starting a-z"))
]
ExperimentName = Annotated[
    str,
    AfterValidator(
        matches(r"[a-z0-9][a-z0-9._-]{0,47}", "1-48 of a-z 0-9 . _ -, starting a-z or 0-9")
    ),
]


# Capture bounds (host/capture.py), shared with the lab file's `capture:` option.
#: The pcap file's size bound: QEMU has none of its own.
CAPTURE_MAX_BYTES = 64 * 1024 * 1024
#: The bytes kept of each frame: whole frames (a link's frames are at most its MTU + 14).
CAPTURE_SNAPLEN = 65535
#: The pcap header (24), one record header (16) and one minimum frame (60).
CAPTURE_MIN_BYTES = 24 + 16 + 60
CAPTURE_SNAPLEN_RANGE = (60, 262144)

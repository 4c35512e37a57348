"""What makes two result sets' figures comparable, and the refusal to compare them otherwise.

A TCG run is several times slower than a KVM run of the same commit, a new QEMU or host
kernel moves every row, another CPU model or vCPU placement too, and a new guest image
changes what runs inside. Comparing across any of these would report the machine, not the
commit: such a comparison is refused with the difference named, unless the user says they
know (`allow`), and then the difference is printed in the report.
"""

from __future__ import annotations

import hashlib
import json

FIELDS = ("accel", "qemu", "host_kernel", "cpu_model", "image_digest", "placement")


class Incomparable(ValueError):
    """Two result sets whose fingerprints differ."""


def fingerprint(meta: dict) -> dict[str, str | None]:
    """The comparability fields of a result file's metadata (None where an older file lacks
    one)."""
    host = meta.get("host", {})
    return {
        "accel": meta.get("accel"),
        "qemu": host.get("qemu"),
        "host_kernel": host.get("kernel"),
        "cpu_model": host.get("cpu_model"),
        "image_digest": (meta.get("image") or {}).get("digest"),
        "placement": meta.get("placement"),
    }


def digest(fp: dict) -> str:
    """A short stable name for a fingerprint, for the history store."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def differences(a: dict, b: dict) -> list[str]:
    """Each field that differs, as `field: A -> B` (an unknown value counts as different:
    nothing is assumed comparable)."""
    fa, fb = fingerprint(a), fingerprint(b)
    return [
        f"{k}: {fa[k] or 'unknown'} -> {fb[k] or 'unknown'}"
        for k in FIELDS
        if fa[k] != fb[k] or fa[k] is None
    ]


def check(base: dict, cand: dict, allow: bool = False) -> list[str]:
    """The differences between two result files' metadata; raises Incomparable when there
    are any and the user did not allow them."""
    diff = differences(base, cand)
    if diff and not allow:
        raise Incomparable(
            "the two result sets are not comparable (" + "; ".join(diff) + "); compare runs "
            "of one machine and accelerator, or pass --allow-different to compare anyway"
        )
    return diff

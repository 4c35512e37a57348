"""Where stackbed keeps things on the host.

Three lifetimes, three places:
- the image cache lives with the checkout (`.stackbed/images`), because it is derived from the
  recipe in this checkout and is reused across runs;
- per-lab runtime state (disk overlays, keys, state file) lives in a host-wide runtime folder,
  so that a sweep finds what any checkout's lab left behind, and two checkouts never collide;
- console logs and results are artifacts for the user and live with the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_state_dir() -> Path:
    """Per-checkout state: image cache and console logs (gitignored)."""
    return Path(os.environ.get("STACKBED_STATE_DIR", PROJECT_ROOT / ".stackbed"))


def image_cache_dir() -> Path:
    return project_state_dir() / "images"


def console_log_dir(lab: str) -> Path:
    return project_state_dir() / "logs" / lab


def runtime_dir() -> Path:
    """Host-wide runtime folder shared by every checkout (slot locks, running labs)."""
    return Path(os.environ.get("STACKBED_RUNTIME_DIR", "/run/stackbed"))


def slots_dir() -> Path:
    return runtime_dir() / "slots"


def labs_dir() -> Path:
    return runtime_dir() / "labs"


def host_cache_dir() -> Path:
    """Facts about this host that outlive a checkout (the accelerator probe)."""
    return Path(os.environ.get("STACKBED_CACHE_DIR", "/var/cache/stackbed"))


def results_dir() -> Path:
    return Path(os.environ.get("STACKBED_RESULTS_DIR", PROJECT_ROOT / "results"))

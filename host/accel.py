"""Pick the accelerator by booting a guest, never by the existence of /dev/kvm.

Nested KVM can exist and still hang a Linux guest (it does on this project's CI machines), so the
probe boots the real image under KVM and waits for SSH. The answer is cached per host boot, QEMU
version and kernel release, so the probe's cost (one boot, or a timeout) is paid once.
`STACKBED_ACCEL=kvm|tcg` overrides the probe.

Whoever starts a lab decides its accelerator here first and hands it to `Lab`: the lab never
probes for itself, so this module may build a lab (for the probe) without a cycle.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from host.config import parse_lab
from host.image import Image, build_image, cached_image
from host.lab import Lab
from host.paths import host_cache_dir

ACCELS = ("kvm", "tcg")


def _host_key() -> dict:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    return {
        "boot_id": boot_id,
        "kernel": platform.release(),
        "qemu": qemu.stdout.splitlines()[0] if qemu.stdout else "unknown",
    }


def _cache_file() -> Path:
    return host_cache_dir() / "accel.json"


def cached_decision() -> dict | None:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("host") == _host_key() else None


def kvm_usable_device() -> str | None:
    """Why /dev/kvm cannot even be tried, or None when it can."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as e:
        return f"/dev/kvm cannot be opened: {e.strerror}"
    os.close(fd)
    return None


def probe_kvm(image: Image, progress: Callable[[str], None]) -> tuple[bool, str]:
    """Boot a one-node lab under KVM; (booted, detail)."""
    config = parse_lab(
        f"lab: accel-probe\nimage: {image.name}\nnodes:\n  - name: probe\n", source="<accel probe>"
    )
    t0 = time.monotonic()
    try:
        with Lab(config, name="accel-probe", accel="kvm", progress=lambda _m: None) as lab:
            state = lab.up()
            clock = (
                lab.guest("probe")
                .run("cat /sys/devices/system/clocksource/clocksource0/current_clocksource")
                .stdout
            )
            return True, f"booted in {state.nodes[0].boot_seconds} s, clocksource {clock.strip()}"
    except Exception as e:  # any failure to boot means: not usable here
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return False, f"no SSH after {time.monotonic() - t0:.0f} s ({first})"


def decide_accel(
    image: Image, progress: Callable[[str], None] = print, reprobe: bool = False
) -> str:
    forced = os.environ.get("STACKBED_ACCEL")
    if forced:
        if forced not in ACCELS:
            raise ValueError(f"STACKBED_ACCEL={forced!r}: expected one of {', '.join(ACCELS)}")
        return forced
    if (why := kvm_usable_device()) is not None:
        return "tcg"
    if not reprobe and (cached := cached_decision()):
        return cached["accel"]
    progress("probing KVM with a real guest boot (once per host boot)...")
    ok, detail = probe_kvm(image, progress)
    accel = "kvm" if ok else "tcg"
    why = detail
    progress(f"accelerator: {accel.upper()} (KVM probe: {why})")
    _cache_file().parent.mkdir(parents=True, exist_ok=True)
    _cache_file().write_text(
        json.dumps(
            {"accel": accel, "detail": why, "host": _host_key(), "probed_at": time.time()}, indent=2
        )
        + "\n"
    )
    return accel


def accel_for(
    image_name: str, requested: str | None = None, progress: Callable[[str], None] = print
) -> str:
    """The accelerator for a lab booting `image_name`: `requested` when the user forced one,
    else `decide_accel` (which may boot the image, so it is built first if not cached)."""
    if requested:
        return requested
    image = cached_image(image_name) or build_image(image_name, progress=progress)
    return decide_accel(image, progress=progress)

"""Pre-flight check: say what is missing on this host and how to fix it, before anything starts."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from host import linkbuf
from host.paths import image_cache_dir, runtime_dir

APT_PACKAGES = [
    "qemu-system-x86",
    "qemu-utils",
    "libvirt-daemon-system",
    "libvirt-clients",
    "libvirt-dev",
    "mmdebstrap",
    "cpio",
    "e2fsprogs",
    "openssh-client",
    "iproute2",
    "iperf3",
    "ethtool",
    "pkg-config",
    "tcpdump",
]
PY_MODULES = [
    "paramiko",
    "libvirt",
    "invoke",
    "yaml",
    "pydantic",
    "rich",
    "tenacity",
    "matplotlib",
    "cryptography",
]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _apt() -> Check:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *APT_PACKAGES],
        capture_output=True,
        text=True,
    )
    installed = {
        line.split()[0]
        for line in proc.stdout.splitlines()
        if len(line.split()) > 1 and line.split()[1].startswith("ii")
    }
    missing = [p for p in APT_PACKAGES if p not in installed]
    return Check(
        "Debian packages",
        not missing,
        "all installed" if not missing else f"missing: {' '.join(missing)}",
        "./quickstart.sh setup   (or: apt-get install " + " ".join(missing) + ")",
    )


def _python() -> Check:
    missing = []
    for mod in PY_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    return Check(
        "Python packages",
        not missing,
        "all importable" if not missing else f"missing: {', '.join(missing)}",
        "./quickstart.sh setup   (creates .venv from pyproject.toml)",
    )


def _root() -> Check:
    return Check(
        "privileges",
        os.geteuid() == 0,
        "root" if os.geteuid() == 0 else "not root",
        "run as root (qemu:///system and /dev/kvm set-up need it)",
    )


def _daemons() -> Check:
    from host.daemons import daemon_running

    down = [d for d in ("virtlogd", "libvirtd") if not daemon_running(d)]
    return Check(
        "libvirt daemons",
        not down,
        "virtlogd and libvirtd answer" if not down else f"not running: {', '.join(down)}",
        "invoke doctor --fix   (starts them; every stackbed command does too)",
    )


def _kvm_device() -> Check:
    from host.daemons import kvm_device_problem

    problem = kvm_device_problem()
    exists = os.path.exists("/dev/kvm")
    return Check(
        "/dev/kvm permissions",
        problem is None,
        problem or ("root:kvm 0660" if exists else "no /dev/kvm (TCG will be used)"),
        "invoke doctor --fix   (chgrp kvm /dev/kvm && chmod 0660 /dev/kvm, as udev would)",
    )


def _libvirt() -> Check:
    try:
        import libvirt

        from host.virt import connect

        conn = connect()
        ver = conn.getLibVersion()
        conn.close()
        return Check(
            "libvirt connection",
            True,
            f"qemu:///system, libvirt {ver // 1000000}.{ver // 1000 % 1000}",
        )
    except Exception as e:  # report, never crash the doctor
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "libvirt" in locals() and isinstance(e, libvirt.libvirtError):
            detail = f"libvirt: {detail}"
        return Check(
            "libvirt connection",
            False,
            detail,
            "see /var/log/libvirt/libvirtd.log; invoke doctor --fix",
        )


def _image() -> Check:
    from host.image import ImageError, cached_image

    try:
        img = cached_image("default")
    except ImageError as e:
        return Check("guest image", False, str(e), "configure a Debian apt source")
    if img is None:
        return Check(
            "guest image",
            False,
            "not built for the current recipe",
            "invoke image.build   (about 1 minute; bench and lab.up build it too)",
        )
    m = img.manifest
    return Check(
        "guest image",
        True,
        f"{img.path.name}: kernel {m['kernel_version']}, python {m['python_version']}",
    )


def _accel(probe: bool) -> Check:
    from host.accel import cached_decision, decide_accel, kvm_usable_device

    if (why := kvm_usable_device()) is not None:
        return Check("accelerator", True, f"TCG ({why})", required=False)
    if probe:
        from host.image import build_image

        accel = decide_accel(build_image("default", progress=lambda _m: None), reprobe=True)
        cached = cached_decision() or {}
        return Check(
            "accelerator", True, f"{accel.upper()} ({cached.get('detail', '')})", required=False
        )
    cached = cached_decision()
    if cached:
        return Check(
            "accelerator",
            True,
            f"{cached['accel'].upper()} (probed: {cached['detail']})",
            required=False,
        )
    return Check(
        "accelerator",
        True,
        "KVM not probed yet on this boot",
        "invoke doctor --probe   (boots one guest under KVM)",
        required=False,
    )


def _runtime() -> Check:
    d = runtime_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        free = (
            shutil.disk_usage(
                image_cache_dir().parent if image_cache_dir().parent.exists() else "/"
            ).free
            / 2**30
        )
    except OSError as e:
        return Check("disk and runtime folder", False, str(e), f"make {d} writable")
    return Check(
        "disk and runtime folder",
        free > 3,
        f"{d} writable; {free:.0f} GiB free",
        "free at least 3 GiB (image build + overlays)",
    )


def _loopback() -> Check:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.1.1.1", 0))
        except OSError as e:
            return Check(
                "loopback 127.1.x.y",
                False,
                str(e),
                "the kernel must route 127.0.0.0/8 to lo (default on Linux)",
            )
    return Check("loopback 127.1.x.y", True, "UDP link endpoints can bind")


def _link_buffers() -> Check:
    why = linkbuf.unavailable_reason()
    if why is not None:
        return Check(
            "link socket buffers",
            False,
            f"cannot give QEMU's link sockets {linkbuf.LINK_RCVBUF >> 20} MiB: {why}",
            "run as root on Linux 5.6 or later; without it a TCG guest's links drop frames "
            "under load (each run records its link_drops)",
            required=False,
        )
    return Check(
        "link socket buffers",
        True,
        f"QEMU's link sockets get {linkbuf.LINK_RCVBUF >> 20} MiB (pidfd_getfd, SO_RCVBUFFORCE)",
    )


def run_checks(probe: bool = False) -> list[Check]:
    checks: list[Callable[[], Check]] = [
        _root,
        _apt,
        _python,
        _daemons,
        _kvm_device,
        _libvirt,
        _runtime,
        _loopback,
        _link_buffers,
        _image,
    ]
    results = [c() for c in checks]
    results.append(_accel(probe))
    return results

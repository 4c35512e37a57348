"""Bring up what libvirt needs on a host without systemd as PID 1.

On a normal Debian host systemd socket-activates `virtlogd` and `libvirtd`; in containers and
minimal machines nothing does, so the project starts them itself. `/dev/kvm` is fixed up the way
udev would (group `kvm`, mode 0660): left at 0600 root:root, libvirt re-probes QEMU on every call
and each define takes close to a minute.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

LIBVIRT_URI = os.environ.get("STACKBED_LIBVIRT_URI", "qemu:///system")
_SOCKETS = {
    "virtlogd": Path("/run/libvirt/virtlogd-sock"),
    "libvirtd": Path("/run/libvirt/libvirt-sock"),
}


class DaemonError(RuntimeError):
    pass


def daemon_running(name: str) -> bool:
    """A daemon counts as running when its socket accepts connections (not just exists)."""
    import socket

    path = _SOCKETS[name]
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def ensure_daemons(timeout: float = 30.0) -> list[str]:
    """Start virtlogd and libvirtd when they are not answering; return what was started."""
    started = []
    for name in ("virtlogd", "libvirtd"):
        if daemon_running(name):
            continue
        exe = shutil.which(name) or f"/usr/sbin/{name}"
        if not Path(exe).exists():
            raise DaemonError(
                f"{name} is not installed: run `./quickstart.sh setup` (apt package "
                f"libvirt-daemon-system)"
            )
        subprocess.run([exe, "--daemon"], check=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not daemon_running(name):
            if time.monotonic() > deadline:
                raise DaemonError(
                    f"{name} was started but its socket {_SOCKETS[name]} does not "
                    f"answer after {timeout:.0f} s; see /var/log/libvirt/"
                )
            time.sleep(0.2)
        started.append(name)
    return started


def kvm_device_problem() -> str | None:
    """Say what is wrong with /dev/kvm's ownership, or None when it is as udev would leave it."""
    dev = Path("/dev/kvm")
    if not dev.exists():
        return None
    st = dev.stat()
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return "group 'kvm' does not exist"
    if st.st_gid != kvm_gid or stat.S_IMODE(st.st_mode) & 0o060 != 0o060:
        return (
            f"/dev/kvm is {stat.filemode(st.st_mode)} gid {st.st_gid}; udev would make it "
            f"crw-rw---- root:kvm (libvirt then stops re-probing QEMU on every call)"
        )
    return None


def fix_kvm_device() -> bool:
    """Apply udev's rule for /dev/kvm; True when something was changed."""
    if kvm_device_problem() is None:
        return False
    os.chown("/dev/kvm", 0, grp.getgrnam("kvm").gr_gid)
    os.chmod("/dev/kvm", 0o660)
    return True

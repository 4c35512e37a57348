"""Attacks a compromised forwarding extension would try, run from inside it (isolation tests).

`python3 -m guest.stack.extension ... --attackable` makes the extension run `run_all` when it
receives SIGUSR1, between two batches of its loop; each attack reports `denied` (with the
error) or `SUCCEEDED` (what it managed), on the supervisor's stdout as
`{"event": "attacks", ...}`. The attacks that apply to any confined domain are the factored
stack's (`guest.stack.factored.attacks`), aimed at the supervisor; the ones added here are what
an extension holding two NICs' rings would try next: reconfigure a NIC (MTU, flags, address),
attach to the supervisor for real, make code writable. In the unconfined control every one
must succeed without disturbing the forwarding, so each that gets through undoes what it did
(the MTU and flags are set to the values they already have, the address added is removed, the
tracee is detached, the page protected back).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import socket
import struct
from collections.abc import Callable

from guest.stack.factored.attacks import Attacks, Succeeded, run_attacks
from guest.stack.factored.uring import UringTransmit

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_LIBC.ptrace.restype = ctypes.c_long
_LIBC.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_LIBC.mprotect.restype = ctypes.c_int
_LIBC.ioctl.restype = ctypes.c_int
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCGIFMTU, SIOCSIFMTU = 0x8921, 0x8922
SIOCSIFADDR = 0x8916
_IFREQ = struct.Struct("16sH22x")  # ifr_name, then ifr_flags / ifr_mtu (as a short / int)
_IFREQ_MTU = struct.Struct("16si20x")
_IFREQ_ADDR = struct.Struct("16sH2s4s8x")  # ifr_name, then a sockaddr_in (family, port, addr)
#: What the address attack gives the NIC: from the benchmarking range, on no link.
PROBE_ADDR = "198.18.255.254"


def _ioctl_every_fd(request: int, ifreq: bytes) -> list[str]:
    """The ioctl on every fd the domain holds (an fd of the right kind would do): the errors."""
    errors = []
    for fd in range(3, 256):
        try:
            os.fstat(fd)
        except OSError:
            continue
        buf = ctypes.create_string_buffer(ifreq, len(ifreq))
        ctypes.set_errno(0)
        if _LIBC.ioctl(fd, ctypes.c_ulong(request), buf) == 0:
            raise Succeeded(f"ioctl {request:#x} on fd {fd} succeeded")
        errors.append(f"fd {fd}: {os.strerror(ctypes.get_errno())}")
    return errors


class ExtensionAttacks:
    """The attacks, against the extension's live state: its NICs' names, the supervisor's
    pid, and one of its send-only io_urings."""

    def __init__(self, nics: list[str], supervisor_pid: int, ring: UringTransmit) -> None:
        self.nics = nics
        self.supervisor_pid = supervisor_pid
        self.ring = ring
        # The factored stack's attacks need no session server or link end for those run here.
        self.common = Attacks(None, None, supervisor_pid, ring)  # type: ignore[arg-type]

    def _nic_ioctl(self, get: int, put: int, layout: struct.Struct, what: str) -> None:
        """Read a NIC setting and write it back unchanged: through a socket of its own, then
        through every fd the extension holds. Writing is what the kernel checks."""
        name = self.nics[0].encode()
        errors: list[str] = []
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                current = fcntl.ioctl(s, get, layout.pack(name, 0))
                fcntl.ioctl(s, put, current)
                raise Succeeded(f"set the {what} of {self.nics[0]} (to its current value)")
        except OSError as e:
            errors.append(f"own socket: {e}")
        errors += _ioctl_every_fd(put, layout.pack(name, 0))
        raise PermissionError(f"{what}: {'; '.join(errors)}")

    def set_nic_mtu(self) -> None:
        self._nic_ioctl(SIOCGIFMTU, SIOCSIFMTU, _IFREQ_MTU, "MTU")

    def set_nic_flags(self) -> None:
        self._nic_ioctl(SIOCGIFFLAGS, SIOCSIFFLAGS, _IFREQ, "flags")

    def set_nic_address(self) -> None:
        """Give the NIC an IPv4 address of our choosing (the kernel would then take frames for
        it): through a socket of its own, then through every fd the extension holds. If that
        worked, the address is removed again at once (0.0.0.0 deletes it, as `ifconfig IF
        0.0.0.0` does), so that the control run's NIC stays as the supervisor set it."""
        name = self.nics[0].encode()

        def ifreq(addr: str) -> bytes:
            return _IFREQ_ADDR.pack(name, socket.AF_INET, bytes(2), socket.inet_aton(addr))

        errors: list[str] = []
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                fcntl.ioctl(s, SIOCSIFADDR, ifreq(PROBE_ADDR))
                fcntl.ioctl(s, SIOCSIFADDR, ifreq("0.0.0.0"))
                raise Succeeded(f"gave {self.nics[0]} the address {PROBE_ADDR} (and removed it)")
        except OSError as e:
            errors.append(f"own socket: {e}")
        errors += _ioctl_every_fd(SIOCSIFADDR, ifreq(PROBE_ADDR))
        raise PermissionError(f"address: {'; '.join(errors)}")

    def ptrace_supervisor(self) -> None:
        """Attach to the supervisor (root, holding the packet sockets); detach at once if that
        worked, so that the control run's supervisor goes on."""
        pid = self.supervisor_pid
        if _LIBC.ptrace(PTRACE_ATTACH, pid, None, None) == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"ptrace(ATTACH, supervisor): {os.strerror(err)}")
        os.waitpid(pid, 0x40000000)  # __WALL: the tracee's stop
        _LIBC.ptrace(PTRACE_DETACH, pid, None, None)
        raise Succeeded("attached to the supervisor (and detached)")

    def make_code_writable(self) -> None:
        """mprotect a page of libc's code read-write-exec: the way to patch code in place."""
        addr = ctypes.cast(_LIBC.getpid, ctypes.c_void_p).value or 0
        page = addr & ~(mmap.PAGESIZE - 1)
        rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        if _LIBC.mprotect(page, mmap.PAGESIZE, rwx) == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"mprotect(RWX) of libc code: {os.strerror(err)}")
        _LIBC.mprotect(page, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC)
        raise Succeeded("made a page of libc's code writable (and protected it back)")

    def run_all(self) -> dict[str, str]:
        c = self.common
        attacks: dict[str, Callable[[], None]] = {
            "open_socket": c.open_socket,
            "open_packet_socket": c.open_packet_socket,
            "open_file": c.open_file,
            "open_supervisor_memory": c.open_driver_memory,
            "ptrace_supervisor": self.ptrace_supervisor,
            "signal_supervisor": c.kill_driver,
            "spawn_process": c.spawn_process,
            "set_nic_mtu": self.set_nic_mtu,
            "set_nic_flags": self.set_nic_flags,
            "set_nic_address": self.set_nic_address,
            "make_code_writable": self.make_code_writable,
            "map_uring_entries": c.map_uring_entries,
            "create_uring": c.create_uring,
            "register_on_uring": c.register_on_uring,
        }
        return run_attacks(attacks)

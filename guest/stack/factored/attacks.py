"""Attacks a compromised protocol domain would try, run from inside it (for the isolation tests).

`python3 -m guest.stack.factored ... --attackable` makes the protocol domain run `run_all` when
it receives SIGUSR1, after confinement, with whatever sessions are live at that moment; each
attack reports `denied` (with the error the kernel or Python gave) or `SUCCEEDED` (what it
managed), on the launcher's stdout as `{"event": "attacks", ...}`. The tests require every one
to be denied, and the stack to keep serving afterwards (contained). Nothing here is used
outside that option.

Each attack is the strongest form we know of its kind, not a polite API call: a write into
another domain's memory is tried through the read-only view, by remapping every fd the domain
holds writable, and by `mprotect` of the mapping itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import socket
import stat
from collections.abc import Callable, Mapping

from guest.stack.session.server import SessionServer
from guest.stack.session.shm import map_shared

from . import uring
from .link import LinkEnd

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_LIBC.ptrace.restype = ctypes.c_long
_LIBC.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_LIBC.mprotect.restype = ctypes.c_int
PTRACE_ATTACH = 16
IORING_REGISTER_FILES_UPDATE = 6


class Succeeded(Exception):
    """The attack got through: the message says what it did."""


def run_attacks(attacks: Mapping[str, Callable[[], None]]) -> dict[str, str]:
    """Try each attack in turn: by name, `SUCCEEDED: ...` or `denied: <error>: ...`."""
    results: dict[str, str] = {}
    for name, attack in attacks.items():
        try:
            attack()
            results[name] = "SUCCEEDED: returned normally"
        except Succeeded as e:
            results[name] = f"SUCCEEDED: {e}"
        except (OSError, ValueError) as e:
            results[name] = f"denied: {type(e).__name__}: {e}"
    return results


def _libc_call(result: int, what: str) -> None:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    raise Succeeded(f"{what} returned {result}")


def _address(view: memoryview) -> int:
    """Start address of a read-only view made by `shm.map_readonly` (over a ctypes array)."""
    return ctypes.addressof(view.obj)


def _mprotect_writable(view: memoryview, what: str) -> None:
    length = len(view) // mmap.PAGESIZE * mmap.PAGESIZE
    _libc_call(
        _LIBC.mprotect(_address(view), length, mmap.PROT_READ | mmap.PROT_WRITE),
        f"mprotect(PROT_WRITE) of {what}",
    )


def _write_view(view: memoryview, what: str) -> None:
    try:
        view[0] = view[0] ^ 0xFF
    except TypeError as e:
        raise PermissionError(f"writing {what}: {e}") from None
    raise Succeeded(f"wrote a byte of {what}")


class Attacks:
    """The attacks, against the domain's live state: its link end (`--link copy`; None with
    shared rings, where the driver domain has no memory the protocol domain sees), its session
    server, the driver domain's pid, and its send-only io_uring (`--link uring`, else None)."""

    def __init__(
        self,
        end: LinkEnd | None,
        server: SessionServer,
        driver_pid: int,
        ring: uring.UringTransmit | None = None,
    ):
        self.end = end
        self.server = server
        self.driver_pid = driver_pid
        self.ring = ring
        self.own_inode = end.own_inode if end is not None else None

    def open_socket(self) -> None:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        raise Succeeded("opened an AF_INET socket")

    def open_packet_socket(self) -> None:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        raise Succeeded("opened an AF_PACKET socket")

    def open_file(self) -> None:
        os.close(os.open("/etc/passwd", os.O_RDONLY))
        raise Succeeded("opened /etc/passwd")

    def open_driver_memory(self) -> None:
        os.close(os.open(f"/proc/{self.driver_pid}/mem", os.O_RDWR))
        raise Succeeded("opened the driver's /proc/PID/mem")

    def ptrace_driver(self) -> None:
        _libc_call(_LIBC.ptrace(PTRACE_ATTACH, self.driver_pid, None, None), "ptrace(ATTACH)")

    def kill_driver(self) -> None:
        """Signal 0: the kernel checks the right to signal exactly as for SIGKILL, but a
        success (the unconfined control) leaves the driver alive to finish the run."""
        os.kill(self.driver_pid, 0)
        raise Succeeded("may signal the driver domain (kill(pid, 0) passed: SIGKILL would)")

    def spawn_process(self) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        raise Succeeded("forked a process")

    def write_driver_ring(self) -> None:
        """The driver's region (RX ring, its indices): through the view, then mprotect."""
        assert self.end is not None
        view = self.end.peer_view
        with contextlib.suppress(PermissionError):  # read-only, as it should be: now mprotect
            _write_view(view, "the driver's RX ring")
        _mprotect_writable(view, "the driver's RX ring")

    def write_session_rings(self) -> None:
        """Every application's own region (its TX ring): view, then mprotect."""
        regions = [
            sock.channel.client_region
            for session in self.server._sessions.values()
            for sock in session.sockets.values()
            if sock.channel is not None
        ]
        if not regions:
            raise Succeeded("no session to attack: the test must open one first")
        for region in regions:
            with contextlib.suppress(PermissionError):
                _write_view(region.view, "an application's TX ring")
            _mprotect_writable(region.view, "an application's TX ring")

    def create_uring(self) -> None:
        """A ring of its own: io_uring operations run without passing the seccomp filter, so an
        unrestricted ring would open files and sockets past it."""
        fd, _ = uring.setup(8)
        os.close(fd)
        raise Succeeded(f"io_uring_setup returned {fd}")

    def register_on_uring(self) -> None:
        """Swap the ring's one file (the packet socket) for another of the domain's fds: the
        kernel's restrictions refuse every register operation, and seccomp the syscall."""
        assert self.ring is not None
        fds = (ctypes.c_int * 1)(2)  # stderr in slot 0
        update = (ctypes.c_uint64 * 2)(0, ctypes.addressof(fds))  # io_uring_rsrc_update
        uring.register(self.ring.fd, IORING_REGISTER_FILES_UPDATE, update, 1, "FILES_UPDATE")
        raise Succeeded("io_uring_register(FILES_UPDATE) swapped the ring's socket")

    def map_uring_entries(self) -> None:
        """Map the ring's submission entries writable, to rewrite the one send the launcher
        wrote (e.g. with a destination address on another interface)."""
        assert self.ring is not None
        denied: list[str] = []
        err = 0
        for offset in (uring.IORING_OFF_SQES, 1 << 32 | uring.IORING_OFF_SQES):
            try:
                entries = map_shared(self.ring.fd, uring.ENTRIES * 64, writable=True, offset=offset)
            except OSError as e:
                err = e.errno or 0
                denied.append(f"at {offset:#x}: {errno.errorcode.get(err, err)}")
                continue
            entries.release()
            raise Succeeded(f"mapped the ring's submission entries writable (at {offset:#x})")
        raise OSError(err, f"mmap of the ring's submission entries: {denied}")

    def remap_fds_writable(self) -> None:
        """Map every regular file this domain holds writable and shared, but its own region."""
        tried: list[str] = []
        for fd in range(3, 1024):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_ino == self.own_inode or not st.st_size:
                continue
            mode = ("r", "w", "rw", "?")[fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE]
            try:
                with mmap.mmap(fd, mmap.PAGESIZE, flags=mmap.MAP_SHARED):
                    pass
            except OSError as e:
                # EACCES (read-only fd) or EPERM (sealed against writing): denied
                tried.append(f"fd {fd} ({mode}): {errno.errorcode.get(e.errno or 0, e.errno)}")
                continue
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = "?"
            raise Succeeded(f"mapped fd {fd} ({name}, inode {st.st_ino}) writable")
        raise PermissionError(
            errno.EACCES, f"no writable mapping through any of {len(tried)} fds: {tried}"
        )

    def run_all(self) -> dict[str, str]:
        attacks: dict[str, Callable[[], None]] = {
            "open_socket": self.open_socket,
            "open_packet_socket": self.open_packet_socket,
            "open_file": self.open_file,
            "open_driver_memory": self.open_driver_memory,
            "ptrace_driver": self.ptrace_driver,
            "kill_driver": self.kill_driver,
            "spawn_process": self.spawn_process,
            "write_session_rings": self.write_session_rings,
            "remap_fds_writable": self.remap_fds_writable,
            "create_uring": self.create_uring,
        }
        if self.end is not None:
            attacks["write_driver_ring"] = self.write_driver_ring
        if self.ring is not None:
            attacks["register_on_uring"] = self.register_on_uring
            attacks["map_uring_entries"] = self.map_uring_entries
        return run_attacks(attacks)

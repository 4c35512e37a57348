"""Shared memory regions for the app<->stack boundary: one memfd per region, sealed.

Why memfds: they are anonymous (nothing in /dev/shm to leak when a process dies), they travel
to another process as plain fds over a UNIX socket (`send_fds`/`recv_fds`), and they can be
*sealed*, which is what makes sharing with an untrusted peer safe:

- `F_SEAL_SHRINK | F_SEAL_GROW` on every region: otherwise a peer holding the fd could
  `ftruncate` the file to zero and the next access through *our* mapping would raise SIGBUS and
  kill the stack. With the seal, the size is fixed for everyone, forever.
- `F_SEAL_FUTURE_WRITE` on regions only the stack may write (Linux >= 5.1): the stack maps the
  region writable *first*, then seals; its existing mapping keeps working, while any later
  writable mapping or `write()` is refused for everyone. On top of that the peer is handed a
  read-only fd (reopened through /proc/self/fd with O_RDONLY), so even a kernel without the seal
  refuses `PROT_WRITE` on it. The client's view of stack-owned memory is `PROT_READ`: writing
  through it raises, and reading gives views the client cannot modify.
- `F_SEAL_SEAL` last, so the peer cannot add seals of its own (e.g. `F_SEAL_WRITE`, which would
  be harmless to us but is still not its business).

`fence()` is here too because it is about the memory model of these regions: see its docstring.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import socket
import threading
from typing import Final

_LIBC = ctypes.CDLL(None, use_errno=True)
_mmap = _LIBC.mmap
_mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_mmap.restype = ctypes.c_void_p
_munmap = _LIBC.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value

#: Not exported by Python's fcntl (Linux 5.1, include/uapi/linux/fcntl.h).
F_SEAL_FUTURE_WRITE: Final = 0x0010

PAGE: Final = mmap.PAGESIZE
CACHE_LINE: Final = 64

_fence_lock = threading.Lock()
_acquire = _fence_lock.acquire
_release = _fence_lock.release


def fence() -> None:
    """A full memory barrier, from pure Python.

    The doorbell protocol needs store->load ordering ("I set my sleeping flag, then I look at
    the ring" on one side, "I publish the head, then I look at the flag" on the other: Dekker's
    pattern), which x86-TSO does *not* give: a store may sit in the store buffer while a later
    load completes. A locked instruction drains it. CPython's uncontended `Lock.acquire` /
    `release` on Linux are glibc `sem_trywait`/`sem_post`, i.e. `lock cmpxchg` / `lock xadd`:
    full barriers on x86-64, ~50 ns here. On arm64 those are acquire/release atomics, which
    order the locked word but not our plain stores against our plain loads: a port to a weak
    memory model needs a real `dmb ish` (a C helper), not this.
    """
    _acquire()
    _release()


def page_round(size: int) -> int:
    return (size + PAGE - 1) // PAGE * PAGE


class SharedRegion:
    """One memfd-backed shared mapping, owned (writable) by exactly one side.

    The creator calls `create`, maps it, and hands `peer_fd(readonly=...)` to the other side,
    which calls `attach`. `view` is a memoryview of the whole mapping (read-only when mapped
    read-only: writing through it raises TypeError).
    """

    __slots__ = ("_mm", "fd", "size", "view", "writable")

    def __init__(self, fd: int, size: int, writable: bool) -> None:
        self.fd = fd
        self.size = size
        self.writable = writable
        if writable:
            self._mm: mmap.mmap | None = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            self.view = memoryview(self._mm)
        else:
            self._mm = None
            self.view = map_readonly(fd, size)

    @classmethod
    def create(cls, size: int, name: str = "stackbed") -> SharedRegion:
        """A new zeroed region of `size` bytes (page-rounded) that only the creator may write.

        Mapped writable here, then sealed against any later writable mapping: the peer can map
        it read-only and nothing else.
        """
        size = page_round(size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            region = cls(fd, size, writable=True)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        return region

    @classmethod
    def create_for_peer(cls, size: int, name: str = "stackbed") -> SharedRegion:
        """A region the *peer* writes: the creator keeps only a read-only mapping of it.

        Mapping it read-only on our side too is defence in depth: a stack bug cannot scribble
        on memory the client owns (and the stack has no reason to write there).
        """
        size = page_round(size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            return cls(fd, size, writable=False)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, size: int, *, writable: bool) -> SharedRegion:
        """Map a region received from the peer. Refuses one smaller than promised (a short
        file would SIGBUS on access) or one the peer could still shrink (unsealed)."""
        actual = os.fstat(fd).st_size
        if actual < size:
            raise ValueError(f"shared region is {actual} bytes, expected {size}")
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            raise ValueError("shared region is not sealed against shrinking")
        return cls(fd, size, writable)

    def peer_fd(self, *, readonly: bool) -> int:
        """A new fd for the peer (the caller closes it after sending). Read-only fds are a fresh
        open file description with O_RDONLY, so `mmap(PROT_WRITE)` on them fails with EACCES."""
        if readonly:
            try:
                return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # no /proc: the F_SEAL_FUTURE_WRITE seal alone refuses writable maps
        return os.dup(self.fd)

    def close_fd(self) -> None:
        """Close the fd but keep the mapping (which holds its own reference to the memory)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        """Unmap and close. Views handed out (ring slots) may still pin the mapping: then the
        unmap happens when the last of them is garbage collected, never under a live view."""
        if self.view is None:
            return
        self.view.release()
        self.view = None
        mm, self._mm = self._mm, None
        if mm is not None:
            with contextlib.suppress(BufferError):
                mm.close()  # else exported slot views remain; mmap's dealloc unmaps after them
        self.close_fd()


class _Unmapper:
    """Unmaps a mapping when the last view of it is gone (see `map_shared`)."""

    __slots__ = ("addr", "size")

    def __init__(self, addr: int, size: int) -> None:
        self.addr, self.size = addr, size

    def __del__(self, munmap=_munmap) -> None:  # bound now: module globals may be gone at exit
        munmap(self.addr, self.size)


def map_shared(fd: int, size: int, *, writable: bool = False, offset: int = 0) -> memoryview:
    """A shared mapping of `fd` that keeps no fd of its own (`PROT_READ`, or read and write).

    Python's `mmap.mmap` keeps a dup of the fd it maps, for its whole life. For a region the
    *peer* writes, a dup of the peer's read-write memfd would let this process map the region
    writable again at any time (the factored stack's protocol domain, confined, must not be
    able to write an application's transmit ring). Mapped here through libc, the only way to
    write a read-only mapping is `mprotect`, which the domains' seccomp filter allows for
    read/exec only. For the same reason the protocol domain maps the kernel's packet rings
    here: it keeps the rings and not the packet socket behind them. The mapping lives as long
    as any view of it: the ctypes array behind the views holds the `_Unmapper`. `offset`
    selects what to map of an fd that multiplexes several regions (an io_uring's rings).
    """
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    addr = _mmap(None, size, prot, mmap.MAP_SHARED, fd, offset)
    if addr in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of a shared region failed: {os.strerror(err)}")
    array = (ctypes.c_char * size).from_address(addr)
    array.unmapper = _Unmapper(addr, size)  # type: ignore[attr-defined]
    view = memoryview(array).cast("B")
    return view if writable else view.toreadonly()


def map_readonly(fd: int, size: int) -> memoryview:
    """`map_shared(fd, size)`: a read-only mapping that keeps no fd (see there why)."""
    return map_shared(fd, size)


def send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    """One message with fds attached (SCM_RIGHTS): the receiver gets its own copies."""
    socket.send_fds(sock, [data], fds)


def recv_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it. Fds beyond `maxfds` are closed by the kernel;
    a truncated message or control part is an error (the sender is broken)."""
    data, fds, flags, _ = socket.recv_fds(sock, bufsize, maxfds)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise OSError("truncated control message")
    return data, fds

"""Lab slots: deterministic, collision-free loopback addresses and ports for each running lab.

After netlab: a lab holds a slot number S (1..MAX_SLOT) for as long as it runs, and everything it
binds on the host is derived from it, so two labs (or two checkouts) never clash:
- each node N (0-based) has the loopback address 127.1.S.(N+1) for its UDP link endpoints, and
  link L (0-based) uses UDP port 10000+L on both of its ends' addresses;
- node N's SSH is forwarded from 127.0.0.1:(20000 + 128*S + N), below Linux's ephemeral range
  (32768+) so that outgoing connections never take our ports.
The slot is held with an flock on a file in the runtime folder: a process that dies, however it
dies, releases its slot. The first slot tried is a hash of the lab name, so a lab usually gets
the same addresses and ports every time.
"""

from __future__ import annotations

import fcntl
import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

from host.paths import slots_dir

MAX_SLOT = 90
SSH_PORT_BASE = 20000
SSH_PORTS_PER_SLOT = 128
LINK_PORT_BASE = 10000


class SlotError(RuntimeError):
    pass


def node_loopback(slot: int, node_index: int) -> str:
    return f"127.1.{slot}.{node_index + 1}"


def ssh_port(slot: int, node_index: int) -> int:
    return SSH_PORT_BASE + SSH_PORTS_PER_SLOT * slot + node_index


def link_port(link_index: int) -> int:
    return LINK_PORT_BASE + link_index


def tcp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as QEMU's hostfwd sets it: TIME_WAIT leftovers of closed SSH sessions
        # do not make a port busy, only a socket still bound to it does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Slot:
    number: int
    lab: str
    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
                self.fd = -1


def _still_linked(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (the lock file was not unlinked or replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def remove_if_unheld(path: Path) -> bool:
    """Unlink a slot's lock file that no process holds, left by an owner that died without
    releasing its slot (SIGKILL). The lock is taken first, so a live lab's file is never
    removed; unlinking before closing, as `Slot.release` does, keeps `allocate_slot`'s
    `_still_linked` check true for a lab that opened the file in between."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not _still_linked(fd, path):
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def remove_unheld_slots() -> list[Path]:
    """Remove every slot lock file nobody holds; the paths removed."""
    d = slots_dir()
    if not d.is_dir():
        return []
    return [path for path in sorted(d.glob("*.lock")) if remove_if_unheld(path)]


def allocate_slot(lab: str, nodes: int) -> Slot:
    """Take the first free slot, starting from the lab name's hash, whose SSH ports are free."""
    d = slots_dir()
    d.mkdir(parents=True, exist_ok=True)
    first = zlib.crc32(lab.encode()) % MAX_SLOT
    for i in range(MAX_SLOT):
        number = (first + i) % MAX_SLOT + 1
        path = d / f"{number}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not _still_linked(fd, path):
            # Its holder released it (unlink, then close) between our open and our flock: we
            # hold a file nobody else will open, and a new lab may create and lock a fresh
            # one under the same name. Treat the slot as taken.
            os.close(fd)
            continue
        if all(tcp_port_free(ssh_port(number, n)) for n in range(nodes)):
            os.ftruncate(fd, 0)
            os.write(fd, f"{lab} {os.getpid()}\n".encode())
            return Slot(number, lab, path, fd)
        os.close(fd)
    raise SlotError(
        f"no free lab slot: all {MAX_SLOT} are taken or their ports are in use; "
        f"`invoke lab.sweep` removes what stopped labs left"
    )

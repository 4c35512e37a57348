"""The host sockets that carry a lab's links: their receive buffers, and what they drop.

Each VM link is a pair of QEMU UDP sockets on 127.x.y.z (`domain._nic_xml`). QEMU leaves their
receive buffer at the host's default (net.core.rmem_default, 208 KiB on Debian), and a TCG
guest's QEMU drains its socket more slowly than the peer's e1000 fills it: one 64 KiB TSO
write leaves as 45 frames at once. Measured on a 2-core TCG host, every 5 s kernel stream lost
~360 frames there (0.2 %) and every mono stream ~100, each one a retransmission and some an
RTO, on a link the lab file describes as lossless. The kernel counts those drops per socket
(/proc/net/udp) and nowhere else: no guest counter sees them.

`set_rcvbuf` gives the link sockets of the lab's QEMU processes a buffer of `LINK_RCVBUF`: it
takes a copy of QEMU's descriptor with pidfd_getfd(2) and sets SO_RCVBUFFORCE on it, which
changes QEMU's own socket and nothing else on the host (no sysctl to change and restore, and
nothing to undo: the socket goes with its QEMU). `drops` reads the per-socket drop counts, so
each run records what its links lost on the host, whatever the buffer.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterable
from pathlib import Path

#: Receive buffer of a link socket: room for ~1800 full frames (the kernel charges ~2.3 KiB
#: per 1514-byte datagram), more than a guest's whole TCP window in flight.
LINK_RCVBUF = 4 * 1024 * 1024
#: pidfd_getfd(2), the same number on every architecture (the generic syscall table, 5.6+).
_SYS_PIDFD_GETFD = 438
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_PROC = Path("/proc")

Endpoint = tuple[str, int]


class LinkBufferError(OSError):
    """The link sockets' buffers could not be set (the reason is the message)."""


def endpoint_text(endpoint: Endpoint) -> str:
    return f"{endpoint[0]}:{endpoint[1]}"


def parse_endpoint(text: str) -> Endpoint:
    """`endpoint_text`'s inverse: "127.1.58.2:10000" -> ("127.1.58.2", 10000)."""
    addr, _, port = text.rpartition(":")
    return addr, int(port)


def _proc_form(endpoint: Endpoint) -> str:
    """`127.1.58.2:10000` as /proc/net/udp writes it: `023A017F:2710` (the address in host
    byte order, which is little-endian on every machine this runs on)."""
    packed = socket.inet_aton(endpoint[0])
    return f"{int.from_bytes(packed, 'little'):08X}:{endpoint[1]:04X}"


def parse_udp_table(text: str) -> dict[str, tuple[int, int]]:
    """/proc/net/udp as {local address (its form): (inode, drops)}."""
    table: dict[str, tuple[int, int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 13:
            table[fields[1]] = (int(fields[9]), int(fields[12]))
    return table


def _udp_table() -> dict[str, tuple[int, int]]:
    return parse_udp_table((_PROC / "net" / "udp").read_text())


def drops(endpoints: Iterable[Endpoint]) -> dict[str, int]:
    """Datagrams each of these local sockets dropped since it was opened (a full receive
    buffer, mostly); an endpoint with no socket is left out."""
    table = _udp_table()
    out: dict[str, int] = {}
    for endpoint in endpoints:
        entry = table.get(_proc_form(endpoint))
        if entry is not None:
            out[endpoint_text(endpoint)] = entry[1]
    return out


def _holders(inodes: set[int]) -> Iterable[tuple[int, int, int]]:
    """(pid, fd, inode) of every descriptor of a QEMU process that is one of these sockets."""
    for proc in _PROC.iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().startswith("qemu"):
                continue
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                yield int(proc.name), int(fd.name), int(target[8:-1])


def _set_rcvbuf(pid: int, fd: int, size: int) -> int:
    """Set SO_RCVBUFFORCE on descriptor `fd` of process `pid`; the buffer the kernel granted."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            err = ctypes.get_errno()
            raise LinkBufferError(err, f"pidfd_getfd(qemu pid {pid}): {os.strerror(err)}")
    finally:
        os.close(pidfd)
    sock = socket.socket(fileno=copy)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        sock.close()  # our copy only: QEMU's descriptor stays open


def unavailable_reason() -> str | None:
    """Why `set_rcvbuf` cannot work on this host (None: it can), found by doing both of its
    steps on a socket of this process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            _set_rcvbuf(os.getpid(), probe.fileno(), 2 * 212992)
        except PermissionError:
            return "SO_RCVBUFFORCE needs root (CAP_NET_ADMIN)"
        except OSError as exc:
            return str(exc)
    return None


def set_rcvbuf(endpoints: Iterable[Endpoint], size: int = LINK_RCVBUF) -> dict[str, int]:
    """Give the QEMU sockets bound to these endpoints a receive buffer of `size` bytes; the
    buffer each got (the kernel reports twice what was asked). Raises LinkBufferError when an
    endpoint has no QEMU socket or the kernel refuses (not root, a kernel before 5.6)."""
    wanted = {_proc_form(e): e for e in endpoints}
    table = _udp_table()
    missing = [endpoint_text(e) for form, e in wanted.items() if form not in table]
    if missing:
        raise LinkBufferError(f"no socket bound to {', '.join(missing)}")
    by_inode = {table[form][0]: e for form, e in wanted.items()}
    granted: dict[str, int] = {}
    try:
        for pid, fd, inode in _holders(set(by_inode)):
            granted[endpoint_text(by_inode[inode])] = _set_rcvbuf(pid, fd, size)
    except PermissionError as exc:
        raise LinkBufferError(f"setting SO_RCVBUFFORCE needs root: {exc}") from exc
    if len(granted) < len(by_inode):
        held = ", ".join(sorted(granted)) or "none"
        raise LinkBufferError(f"found QEMU holding {held} of {len(by_inode)} link sockets")
    return granted

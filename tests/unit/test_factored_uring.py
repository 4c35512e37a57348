"""The send-only io_uring of `--link uring` (`guest.stack.factored.uring`): it transmits, it
reports what the kernel refused, and it can do nothing else.

A UNIX datagram socketpair stands in for the packet socket: `send()` of no bytes on it queues
an empty datagram at the peer, so every send the ring makes can be counted there, and a full
peer queue makes the kernel refuse the next one (EAGAIN) as a full packet socket would.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from guest.stack.factored import uring
from guest.stack.session.shm import map_shared

pytestmark = pytest.mark.skipif(uring.supported() is not None, reason=str(uring.supported()))

IORING_OP_OPENAT = 18
IORING_REGISTER_FILES_UPDATE = 6


@pytest.fixture
def ring() -> Iterator[tuple[uring.SendRing, uring.UringTransmit, socket.socket]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    peer.setblocking(False)
    send_ring = uring.SendRing(ours.fileno())
    transmit = uring.UringTransmit(os.dup(send_ring.fd), send_ring.layout, send_ring.map_queues())
    ours.close()  # as in the launcher: the ring keeps the socket, this process does not
    yield send_ring, transmit, peer
    transmit.close()
    send_ring.close()
    peer.close()


def _datagrams(peer: socket.socket) -> int:
    n = 0
    while True:
        try:
            peer.recv(16)
        except BlockingIOError:
            return n
        n += 1


def test_every_request_is_one_send_completed_inline(ring) -> None:
    _, transmit, peer = ring
    for _ in range(3 * uring.ENTRIES + 1):  # wraps the queues several times
        transmit.request()
    assert _datagrams(peer) == 3 * uring.ENTRIES + 1
    assert transmit.stats.submits == 3 * uring.ENTRIES + 1
    assert transmit.stats.errors == transmit.stats.no_room == 0, transmit.stats


def test_a_send_without_room_completes_at_once_as_no_room(ring) -> None:
    """MSG_DONTWAIT: the kernel does not retry in the background (a late completion would
    not be seen by the flush that asked); the device asks again while slots stay requested."""
    _, transmit, peer = ring
    queued = 0
    while transmit.stats.no_room == 0:
        transmit.request()
        queued += 1
        assert queued < 100_000, "the peer's queue never filled"
    assert transmit.stats.errors == 0
    assert _datagrams(peer) == queued - 1
    transmit.request()  # room again: sends
    assert _datagrams(peer) == 1 and transmit.stats.no_room == 1


def test_the_kernel_refuses_any_other_operation(ring) -> None:
    """The restrictions are the kernel's: even with the entries rewritten (which the protocol
    domain's seccomp policy prevents), only a send on the fixed file runs."""
    send_ring, transmit, peer = ring
    size = send_ring.layout.sq_entries * 64
    entries = map_shared(send_ring.fd, size, writable=True, offset=uring.IORING_OFF_SQES)
    path = ctypes.create_string_buffer(b"/etc/hostname")
    forged = [
        # openat(AT_FDCWD, "/etc/hostname"): an operation other than send
        struct.pack("<BBHiQQIIQHHiQQ", IORING_OP_OPENAT, 0, 0, -100, 0,
                    ctypes.addressof(path), 0, os.O_RDONLY, 0, 0, 0, 0, 0, 0),
        # send on a plain fd, not the fixed file
        struct.pack("<BBHiQQIIQHHiQQ", uring.IORING_OP_SEND, 0, 0, 2, 0, 0, 0,
                    socket.MSG_DONTWAIT, 0, 0, 0, 0, 0, 0),
    ]  # fmt: skip
    for sqe in forged:
        for i in range(send_ring.layout.sq_entries):
            entries[i * 64 : (i + 1) * 64] = sqe
        before = transmit.stats.errors
        transmit.request()
        assert transmit.stats.errors == before + 1
        assert os.strerror(errno.EACCES) in transmit.stats.last_error
    entries.release()
    assert _datagrams(peer) == 0
    fds = (ctypes.c_int * 1)(2)
    update = (ctypes.c_uint64 * 2)(0, ctypes.addressof(fds))
    with pytest.raises(OSError) as refused:
        uring.register(send_ring.fd, IORING_REGISTER_FILES_UPDATE, update, 1, "FILES_UPDATE")
    assert refused.value.errno == errno.EACCES


def test_the_transmit_bench_measures_every_way() -> None:
    """Figures exist and every transmission arrived (`_timed` raises on a lost one); what
    they are is for the bench to print, not for a test to judge."""
    from guest.bench.transmit import measure

    result = measure(50)
    assert result["transmissions"] == 50 and result["uring_errors"] == 0
    assert all(result[key] > 0 for key in ("syscall_us", "uring_us", "driver_us")), result

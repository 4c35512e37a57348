"""A transmit doorbell the kernel serves: an io_uring that can do one thing, `send()` on the
driver domain's packet socket.

Why: over shared rings (`shared.py`) the only crossing left is transmit. The protocol domain
fills TX slots in place, then must get the kernel to take them, and the packet socket that does
that belongs to the driver domain. Ringing the driver costs a wakeup of another process and two
context switches per transmitted batch, on the critical path of every request/response (the
benchmark measures it). A NIC has the same problem and the same answer: its transmit doorbell
is a register, and a driver that maps that register's page into a user domain (as virtio,
RDMA and SR-IOV designs do) lets the domain start transmission of what it wrote in the ring
without being able to program anything else. This module is that register for a packet socket.

The launcher (root) builds the ring before any domain confines itself, and hands the protocol
domain nothing but the ring's fd and the mapping of its queues:

* `io_uring_setup(IORING_SETUP_R_DISABLED)`: a ring that accepts no work until enabled;
* `IORING_REGISTER_FILES`: the packet socket as fixed file 0. The ring keeps a reference; the
  socket's fd itself stays in the driver domain alone, and the protocol domain never gets it;
* every submission entry is written once, by the launcher: `IORING_OP_SEND` on fixed file 0,
  no buffer, no address, `MSG_DONTWAIT`. The protocol domain never maps the entries: it can
  only advance the queue's tail over them, i.e. submit "transmit what the TX ring requests";
* `IORING_REGISTER_RESTRICTIONS`, then `IORING_REGISTER_ENABLE_RINGS`: from then on the kernel
  refuses every operation but `IORING_OP_SEND`, only on a fixed file, and every `register`
  operation (no new files, buffers, eventfds or personalities), whoever asks.

The protocol domain's seccomp policy (`sandbox.PROTOCOL_URING`) allows `io_uring_enter` and
denies `io_uring_setup` (an unrestricted ring of its own would run operations seccomp never
sees) and `io_uring_register`, and maps nothing at a non-zero offset, so that it cannot map the
submission entries and rewrite them (an `IORING_OP_SEND` with a destination address could
transmit the ring's frames on another interface). What it holds is then exactly what the
driver's doorbell gave it: "make the kernel transmit the requested slots on the bound
interface", without a process between.

With `MSG_DONTWAIT` a send that finds no room completes at once with `-EAGAIN` (io_uring does
not retry it in the background), and a send that stops part-way completes with what it sent;
either way the slots not taken stay requested, and the device (`RingDevice.flush`) reads that
back from the slots and asks again, exactly as the monolithic stack does after its own `send()`.

Stdlib only (ctypes and struct): the numbers are Linux's UAPI (`include/uapi/linux/io_uring.h`),
which never change; the ring needs Linux >= 5.10 (restrictions, `R_DISABLED`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

from guest.stack.session.shm import map_shared

# --- syscalls (arch/x86/entry/syscalls/syscall_64.tbl) ------------------------------------
SYS_IO_URING_SETUP: Final = 425
SYS_IO_URING_ENTER: Final = 426
SYS_IO_URING_REGISTER: Final = 427

# --- include/uapi/linux/io_uring.h --------------------------------------------------------
IORING_SETUP_R_DISABLED: Final = 1 << 6
IORING_FEAT_SINGLE_MMAP: Final = 1 << 0
IORING_OFF_SQ_RING: Final = 0
IORING_OFF_SQES: Final = 0x10000000
IORING_OP_SEND: Final = 26
IOSQE_FIXED_FILE: Final = 1 << 0
IORING_REGISTER_FILES: Final = 2
IORING_REGISTER_RESTRICTIONS: Final = 11
IORING_REGISTER_ENABLE_RINGS: Final = 12
IORING_RESTRICTION_SQE_OP: Final = 1
IORING_RESTRICTION_SQE_FLAGS_ALLOWED: Final = 2
IORING_RESTRICTION_SQE_FLAGS_REQUIRED: Final = 3

# struct io_uring_params: 10 u32 (sq_entries .. resv[3]), then io_sqring_offsets and
# io_cqring_offsets, 8 u32 and a u64 each.
_PARAMS: Final = struct.Struct("<10I8IQ8IQ")
# struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off/addr2, addr, len, msg_flags,
# user_data, buf_index, personality, file_index, addr3, pad.
_SQE: Final = struct.Struct("<BBHiQQIIQHHiQQ")
# struct io_uring_restriction: opcode (u16), one u8 (register_op/sqe_op/sqe_flags), resv, resv2[3]
_RESTRICTION: Final = struct.Struct("<HBB3I")
_CQE_SIZE: Final = 16  # struct io_uring_cqe: user_data (u64), res (s32), flags (u32)
_CQE_RES: Final = 8

#: Submission entries: every flush submits one and the kernel runs it inline, so the queue is
#: empty again when `io_uring_enter` returns; a few spare entries cover an interrupted call.
ENTRIES: Final = 4

_LIBC = ctypes.CDLL(None, use_errno=True)
_syscall = _LIBC.syscall
_syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def setup(entries: int, flags: int = 0) -> tuple[int, bytes]:
    """`io_uring_setup`: the new ring's fd and the `io_uring_params` the kernel filled in;
    OSError (with the call's errno) if refused."""
    params = ctypes.create_string_buffer(_PARAMS.size)
    _PARAMS.pack_into(params, 0, entries, 0, flags, *[0] * 25)
    fd = _check(_syscall(SYS_IO_URING_SETUP, entries, params), "io_uring_setup")
    return fd, params.raw


def register(fd: int, op: int, arg: object, nr: int, what: str) -> None:
    """`io_uring_register(fd, op, arg, nr)`; OSError naming `what` if refused."""
    _check(_syscall(SYS_IO_URING_REGISTER, fd, op, arg, nr), f"io_uring_register({what})")


def supported() -> str | None:
    """None if this kernel gives io_uring to this process, else why not (tests skip on it)."""
    try:
        fd, _ = setup(1)
    except OSError as exc:
        return f"{exc.strerror} (errno {exc.errno})"
    os.close(fd)
    return None


@dataclass(frozen=True, slots=True)
class QueueLayout:
    """Where the queues' words are in the ring mapping (what `io_uring_setup` reported)."""

    size: int  # bytes to map at IORING_OFF_SQ_RING (submission and completion queue together)
    sq_entries: int
    sq_head: int  # offsets in the mapping, of: the kernel's consumer index,
    sq_tail: int  # the producer index we advance,
    sq_array: int  # the index array (entry numbers, in submission order),
    cq_entries: int
    cq_head: int  # our consumer index of completions,
    cq_tail: int  # the kernel's producer index,
    cq_mask: int  # the completion ring's index mask (a word the kernel writes there),
    cqes: int  # and the completion entries

    @classmethod
    def from_params(cls, raw: bytes) -> QueueLayout:
        f = _PARAMS.unpack(raw)
        sq_entries, cq_entries, features = f[0], f[1], f[5]
        sq_head, sq_tail, _, _, _, _, sq_array = f[10:17]
        cq_head, cq_tail, cq_mask, _, _, cqes = f[19:25]
        if not features & IORING_FEAT_SINGLE_MMAP:
            raise OSError(errno.ENOSYS, "io_uring without IORING_FEAT_SINGLE_MMAP (Linux < 5.4)")
        size = max(sq_array + 4 * sq_entries, cqes + _CQE_SIZE * cq_entries)
        return cls(
            size, sq_entries, sq_head, sq_tail, sq_array,
            cq_entries, cq_head, cq_tail, cq_mask, cqes,
        )  # fmt: skip


class SendRing:
    """The launcher's side: a ring whose only possible work is `send()` on `sock_fd`.

    Made, restricted and enabled in the constructor; `fd` and `map_queues()` are what the
    protocol domain gets. `close` closes this process's fd (the domain keeps its own).
    """

    def __init__(self, sock_fd: int, entries: int = ENTRIES) -> None:
        self.fd, params = setup(entries, IORING_SETUP_R_DISABLED)
        try:
            self.layout = QueueLayout.from_params(params)
            self._register(IORING_REGISTER_FILES, (ctypes.c_int * 1)(sock_fd), 1, "files")
            self._write_entries()
            rules = [
                (IORING_RESTRICTION_SQE_OP, IORING_OP_SEND),
                (IORING_RESTRICTION_SQE_FLAGS_REQUIRED, IOSQE_FIXED_FILE),
                (IORING_RESTRICTION_SQE_FLAGS_ALLOWED, IOSQE_FIXED_FILE),
            ]
            raw = b"".join(_RESTRICTION.pack(op, value, 0, 0, 0, 0) for op, value in rules)
            buf = ctypes.create_string_buffer(raw, len(raw))
            self._register(IORING_REGISTER_RESTRICTIONS, buf, len(rules), "restrictions")
            self._register(IORING_REGISTER_ENABLE_RINGS, None, 0, "enable")
        except BaseException:
            self.close()
            raise

    def _register(self, op: int, arg: object, nr: int, what: str) -> None:
        register(self.fd, op, arg, nr, what)

    def _write_entries(self) -> None:
        """Every submission entry the same send, and the queue's index array the identity: the
        protocol domain only ever moves the tail. The entries' mapping is dropped here."""
        sqe = _SQE.pack(IORING_OP_SEND, IOSQE_FIXED_FILE, 0, 0, 0, 0, 0, socket.MSG_DONTWAIT,
                        0, 0, 0, 0, 0, 0)  # fmt: skip
        q = self.layout
        entries = map_shared(self.fd, q.sq_entries * _SQE.size, writable=True,
                             offset=IORING_OFF_SQES)  # fmt: skip
        try:
            for i in range(q.sq_entries):
                entries[i * _SQE.size : (i + 1) * _SQE.size] = sqe
        finally:
            entries.release()
        queues = self.map_queues()
        try:
            words = queues.cast("I")
            for i in range(q.sq_entries):
                words[q.sq_array // 4 + i] = i
            words.release()
        finally:
            queues.release()

    def map_queues(self) -> memoryview:
        """The submission and completion queues, read-write, keeping no fd (`shm.map_shared`):
        map, then fork the protocol domain, which inherits the mapping."""
        return map_shared(self.fd, self.layout.size, writable=True, offset=IORING_OFF_SQ_RING)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class TransmitStats:
    submits: int = 0  # io_uring_enter calls that submitted a send
    no_room: int = 0  # sends the kernel refused for now (socket buffer or queue full)
    errors: int = 0  # sends or submissions that failed otherwise (counted, never fatal)
    last_error: str = ""


class UringTransmit:
    """The protocol domain's side: `request()` submits one send and reads its completion.

    The kernel runs a send on a socket inline, inside `io_uring_enter`, so its completion is
    there when the call returns; errors are counted like the driver domain's (`Kicker`), and
    whatever the send did not take stays requested in the TX ring for the next flush.
    """

    def __init__(self, fd: int, layout: QueueLayout, queues: memoryview) -> None:
        self.fd = fd
        self.layout = layout
        self._queues = queues
        self._words = queues.cast("I")
        self._res = queues.cast("i")
        # Word indices into the mapping, computed once: `request` is on every flush.
        self._sq_head = layout.sq_head // 4
        self._sq_tail = layout.sq_tail // 4
        self._cq_head_at = layout.cq_head // 4
        self._cq_tail_at = layout.cq_tail // 4
        self._cqe_res = (layout.cqes + _CQE_RES) // 4  # res of entry 0; entries are 4 words
        self._tail = self._words[self._sq_tail]
        self._cq_head = self._words[self._cq_head_at]
        self._cq_mask = self._words[layout.cq_mask // 4]
        self.stats = TransmitStats()

    def request(self) -> None:
        words = self._words
        tail = self._tail
        head = words[self._sq_head]  # the kernel moves it only inside io_uring_enter
        if (tail - head) & 0xFFFFFFFF < self.layout.sq_entries:  # else: some still wait
            tail = (tail + 1) & 0xFFFFFFFF
            words[self._sq_tail] = tail  # the entry itself was written by the launcher
            self._tail = tail
        self.stats.submits += 1
        pending = (tail - head) & 0xFFFFFFFF
        if _syscall(SYS_IO_URING_ENTER, self.fd, pending, 0, 0, None, 0) < 0:
            err = ctypes.get_errno()
            if err not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):  # else: the next flush
                self._error(f"io_uring_enter: {os.strerror(err)}")
        self._reap()

    def _reap(self) -> None:
        words, res_of = self._words, self._res
        head = self._cq_head
        tail = words[self._cq_tail_at]
        while head != tail:
            res = res_of[self._cqe_res + _CQE_SIZE // 4 * (head & self._cq_mask)]
            if res < 0:
                if -res in (errno.EAGAIN, errno.ENOBUFS):
                    self.stats.no_room += 1
                else:
                    self._error(f"send: {os.strerror(-res)}")
            head = (head + 1) & 0xFFFFFFFF
        words[self._cq_head_at] = head
        self._cq_head = head

    def _error(self, what: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = what

    def close(self) -> None:
        self._words.release()
        self._res.release()
        self._queues.release()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

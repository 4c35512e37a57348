"""The factored stack's sandbox: what a confined domain can no longer do really fails, and what
it still needs really works.

Confining is irrevocable, so each such test runs in a forked child that reports back as JSON
through a pipe and always leaves with `os._exit` (never returning into pytest). Everything the
child uses is imported here at the top: once confined, `openat` is denied, so a lazy import in
the child would fail.

A denied call and an ordinary permission failure can both be EPERM, so the calls are chosen to
tell them apart, and `test_unconfined_child_can_do_all_of_it` makes the same calls with the same
dropped uid but no filter: there each one succeeds (or, for the ptrace of a process that does
not exist, fails differently), which shows the confined assertions are not vacuous.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import re
import select
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guest.stack.factored.sandbox import (
    APP,
    AUDIT_ARCH_X86_64,
    DRIVER,
    FIONBIO,
    POLICIES,
    PROTOCOL,
    PROTOCOL_URING,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SYSCALLS,
    ArgRule,
    build_filter,
    confine,
    drop_privileges,
    supported,
)

pytestmark = pytest.mark.skipif(supported() is not None, reason=f"no sandbox: {supported()}")

UID = GID = 64991
CHILD_TIMEOUT = 10.0
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PR_GET_DUMPABLE = 3
NO_SUCH_PID = 2**31 - 1  # above any pid_max: attaching to it is ESRCH unless never attempted
READABLE_FILE = "/etc/hostname"
DENIED = [
    "socket", "socketpair", "connect", "bind", "listen", "open", "openat", "openat2", "creat",
    "ptrace", "process_vm_readv", "process_vm_writev", "execve", "execveat", "clone", "clone3",
    "fork", "vfork", "kill", "tgkill", "setuid", "setresuid", "mount", "unshare",
    "io_uring_setup", "io_uring_register",
]  # fmt: skip

_LIBC = ctypes.CDLL(None, use_errno=True)
_PTRACE = _LIBC.ptrace
_PTRACE.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_PTRACE.restype = ctypes.c_long
_PRCTL = _LIBC.prctl
_PRCTL.argtypes = (ctypes.c_int, *(ctypes.c_ulong,) * 4)
_PRCTL.restype = ctypes.c_int


# --- a classic-BPF interpreter for the subset build_filter emits ---------------------------
def run_filter(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple = ()) -> int:
    """What the kernel would return for this call; asserts every jump lands inside."""
    insns = list(struct.iter_unpack("HBBI", program))
    full_args = (*args, *(0,) * (6 - len(args)))
    data = struct.pack("<iIQ6Q", nr, arch, 0, *full_args)
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # LD W ABS
            (acc,) = struct.unpack_from("<I", data, k)
            pc += 1
        elif code in (0x15, 0x35):  # JEQ K, JGE K
            taken = acc == k if code == 0x15 else acc >= k
            pc += 1 + (jt if taken else jf)
            assert pc < len(insns), "jump past the end"
        elif code == 0x06:  # RET K
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_filter_layout_and_decisions() -> None:
    program = build_filter(["read", "write", "futex"])
    assert len(program) % 8 == 0
    first = list(struct.iter_unpack("HBBI", program[:24]))
    assert first == [(0x20, 0, 0, 4), (0x15, 1, 0, AUDIT_ARCH_X86_64), (6, 0, 0, 0x80000000)]
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    assert run_filter(program, SYSCALLS["read"]) == SECCOMP_RET_ALLOW
    assert run_filter(program, SYSCALLS["futex"]) == SECCOMP_RET_ALLOW
    assert run_filter(program, SYSCALLS["socket"]) == deny
    assert run_filter(program, 0x40000000 | SYSCALLS["read"]) == deny  # x32 alias of read
    assert run_filter(program, 0, arch=0x40000003) == SECCOMP_RET_KILL_PROCESS  # i386
    enosys = build_filter(["read"], deny_errno=errno.ENOSYS)
    assert run_filter(enosys, SYSCALLS["write"]) == SECCOMP_RET_ERRNO | errno.ENOSYS


def test_filter_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="no_such_syscall"):
        build_filter(["read", "no_such_syscall"])
    with pytest.raises(ValueError, match="frobnicate"):
        build_filter(["read"], rules=[ArgRule("frobnicate", 0, frozenset({1}))])


def test_long_filters_keep_their_jumps_in_range() -> None:
    """Every known syscall allowed (the interpreter asserts each jump lands inside)."""
    program = build_filter(SYSCALLS)
    assert len(program) // 8 > 2 * len(SYSCALLS)
    for nr in SYSCALLS.values():
        assert run_filter(program, nr) == SECCOMP_RET_ALLOW
    assert run_filter(program, 4) == SECCOMP_RET_ERRNO | errno.EPERM  # stat: not in SYSCALLS


def test_arg_rules_check_the_argument() -> None:
    program = build_filter(["read"], rules=[ArgRule("ioctl", 1, frozenset({FIONBIO}))])
    ioctl = SYSCALLS["ioctl"]
    assert FIONBIO == termios.FIONBIO
    assert run_filter(program, ioctl, args=(3, FIONBIO)) == SECCOMP_RET_ALLOW
    assert run_filter(program, ioctl, args=(3, termios.TIOCSTI)) == SECCOMP_RET_ERRNO | 1
    assert run_filter(program, SYSCALLS["read"]) == SECCOMP_RET_ALLOW  # acc still holds nr
    with pytest.raises(ValueError, match="both allowed and ruled"):
        build_filter(["ioctl"], rules=[ArgRule("ioctl", 1, frozenset({FIONBIO}))])


def test_policies_deny_what_they_must() -> None:
    for policy in POLICIES.values():
        program = build_filter(policy.allow, rules=policy.rules)
        for name in DENIED:
            assert name not in policy.allow, (policy.name, name)
            assert run_filter(program, SYSCALLS[name]) == SECCOMP_RET_ERRNO | errno.EPERM
    assert "memfd_create" in PROTOCOL.allow
    assert "memfd_create" not in DRIVER.allow
    assert "memfd_create" not in APP.allow


def test_the_protocol_domain_maps_nothing_at_an_offset() -> None:
    """The send-only io_uring's submission entries are at offset 0x10000000 of its fd: the
    protocol domain must not map them (`MAP_FROM_START`), whatever the upper half says."""
    mmap_nr, deny = SYSCALLS["mmap"], SECCOMP_RET_ERRNO | errno.EPERM
    for policy in (PROTOCOL, PROTOCOL_URING):
        program = build_filter(policy.allow, rules=policy.rules)
        assert run_filter(program, mmap_nr, args=(0, 4096, 3, 1, 5, 0)) == SECCOMP_RET_ALLOW
        for offset in (0x10000000, 1 << 32 | 0x10000000, 4096):
            assert run_filter(program, mmap_nr, args=(0, 4096, 3, 1, 5, offset)) == deny
    enter = SYSCALLS["io_uring_enter"]
    assert run_filter(build_filter(PROTOCOL_URING.allow), enter) == SECCOMP_RET_ALLOW
    for policy in (DRIVER, PROTOCOL, APP):
        assert "io_uring_enter" not in policy.allow, policy.name


HEADER = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


@pytest.mark.skipif(not HEADER.exists(), reason="no kernel headers to compare with")
def test_syscall_numbers_match_the_kernel_headers() -> None:
    known = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+) (\d+)", HEADER.read_text())}
    assert {name: known.get(name) for name in SYSCALLS} == SYSCALLS


# --- the fork harness ---------------------------------------------------------------------
def in_child(body: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run `body` in a forked child and return what it returned (JSON round trip)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it ends here
        code = 0
        try:
            os.close(r)
            try:
                payload: dict[str, object] = {"result": body()}
            except BaseException as exc:
                payload = {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(payload).encode()
            while data:
                data = data[os.write(w, data) :]
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([r], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"child {pid} did not answer within {CHILD_TIMEOUT}s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child died: status {status:#x}"
    payload = json.loads(b"".join(chunks))
    if "error" in payload:
        pytest.fail(f"child failed: {payload['error']}")
    return payload["result"]


def outcome(call: Callable[[], object]) -> str:
    """'ok', or the exception class and errno name of the OSError the call raised."""
    try:
        call()
    except OSError as exc:
        return f"{type(exc).__name__}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"
    return "ok"


def ptrace_attach(pid: int) -> str:
    ctypes.set_errno(0)
    if _PTRACE(PTRACE_ATTACH, pid, None, None) == 0:
        _PTRACE(PTRACE_DETACH, pid, None, None)
        return "ok"
    return errno.errorcode[ctypes.get_errno()]


def prctl_get_dumpable() -> str:
    ctypes.set_errno(0)
    ret = _PRCTL(PR_GET_DUMPABLE, 0, 0, 0, 0)
    return "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]


def fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def new_memfd() -> None:
    os.close(os.memfd_create("sandbox-test", os.MFD_CLOEXEC))


def probes(parent: int, pre_opened: int) -> dict[str, str]:
    """The attacks: each must fail once confined and succeed (or fail otherwise) without."""
    return {
        "socket": outcome(lambda: socket.socket().close()),
        "open": outcome(lambda: os.close(os.open(READABLE_FILE, os.O_RDONLY))),
        "ptrace_parent": ptrace_attach(parent),
        "ptrace_nobody": ptrace_attach(NO_SUCH_PID),
        "fork": outcome(fork_and_reap),
        "prctl_other": prctl_get_dumpable(),
        "ioctl_other": outcome(lambda: fcntl.ioctl(pre_opened, termios.FIOCLEX)),
    }


def test_confined_protocol_domain() -> None:
    parent = os.getpid()

    def body() -> dict[str, object]:
        pid = os.getpid()
        r, w = os.pipe()
        conn, peer = socket.socketpair()  # stands in for an accepted application connection
        report = confine(UID, GID, PROTOCOL)
        denied = probes(parent, r)
        # What the domain still needs.
        t0 = time.monotonic()
        os.write(w, b"ping")
        piped = os.read(r, 4).decode()
        fd = os.memfd_create("region", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, mmap.PAGESIZE)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        region = mmap.mmap(fd, mmap.PAGESIZE)
        region[:6] = b"region"
        through_fd = os.pread(fd, 6, 0).decode()
        sealed = fcntl.fcntl(fd, fcntl.F_GET_SEALS) == seals
        region.close()
        os.close(fd)
        bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        os.eventfd_write(bell, 3)
        rung = os.eventfd_read(bell)
        os.close(bell)
        conn.setblocking(False)  # ioctl(FIONBIO): allowed by its argument rule
        peer.sendall(b"hello")
        received = conn.recv(16).decode()
        conn.close()
        peer.close()
        return {
            "report": report,
            "denied": denied,
            "same_pid": os.getpid() == pid,
            "clock_runs": time.monotonic() >= t0,
            "piped": piped,
            "through_fd": through_fd,
            "sealed": sealed,
            "rung": rung,
            "received": received,
            "resuid": os.getresuid(),
            "resgid": os.getresgid(),
        }

    result = in_child(body)
    report = result["report"]
    assert report["no_new_privs"] == 1
    assert report["seccomp_mode"] == 2
    assert report["cap_eff"] == report["cap_prm"] == 0
    assert report["policy"] == "protocol"
    assert (report["uid"], report["gid"]) == (UID, GID)
    assert result["resuid"] == result["resgid"] == [UID] * 3
    assert result["denied"] == {
        "socket": "PermissionError:EPERM",
        "open": "PermissionError:EPERM",
        "ptrace_parent": "EPERM",
        "ptrace_nobody": "EPERM",  # never reached the kernel's pid lookup: ESRCH otherwise
        "fork": "PermissionError:EPERM",
        "prctl_other": "EPERM",
        "ioctl_other": "PermissionError:EPERM",
    }
    assert result["same_pid"] and result["clock_runs"] and result["sealed"]
    assert result["piped"] == "ping"
    assert result["through_fd"] == "region"
    assert result["rung"] == 3
    assert result["received"] == "hello"


def test_confined_driver_keeps_its_socket() -> None:
    """A UDP socket opened before confinement stands in for the packet socket."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(CHILD_TIMEOUT)
        address = receiver.getsockname()

        def body() -> dict[str, object]:
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            report = confine(UID, GID, DRIVER)
            result = {
                "report": report,
                "memfd": outcome(new_memfd),
                "socket": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
                "sent": sender.sendto(b"frame from the driver", address),
            }
            sender.close()
            return result

        result = in_child(body)
        assert result["report"]["seccomp_mode"] == 2
        assert result["memfd"] == "PermissionError:EPERM"
        assert result["socket"] == "PermissionError:EPERM"
        assert result["sent"] == len(b"frame from the driver")
        assert receiver.recvfrom(64)[0] == b"frame from the driver"
    finally:
        receiver.close()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_installs_and_keeps_the_basics(name: str) -> None:
    def body() -> dict[str, object]:
        conn, peer = socket.socketpair()
        report = confine(UID, GID, POLICIES[name])
        conn.settimeout(1.0)  # ioctl(FIONBIO)
        peer.send(b"x")
        result = {
            "report": report,
            "recv": conn.recv(1).decode(),
            "socket": outcome(lambda: socket.socket().close()),
            "exec": outcome(lambda: os.execv("/bin/true", ["true"])),
        }
        conn.close()
        peer.close()
        return result

    result = in_child(body)
    assert result["report"]["seccomp_mode"] == 2
    assert result["report"]["policy"] == name
    assert result["recv"] == "x"
    assert result["socket"] == result["exec"] == "PermissionError:EPERM"


def test_root_is_refused() -> None:
    def body() -> dict[str, object]:
        refused = []
        for uid, gid in ((0, 0), (UID, 0), (0, GID)):
            try:
                drop_privileges(uid, gid)
            except ValueError:
                refused.append([uid, gid])
        return {"refused": refused, "resuid": os.getresuid()}

    result = in_child(body)  # a child all the same: a bug here must not demote pytest
    assert result == {"refused": [[0, 0], [UID, 0], [0, GID]], "resuid": [0, 0, 0]}


def test_threaded_process_is_refused() -> None:
    def body() -> dict[str, object]:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            confine(UID, GID, APP)
        except RuntimeError as exc:
            message = str(exc)
        else:
            message = "confined"
        stop.set()
        thread.join()
        return {"message": message, "resuid": os.getresuid()}

    result = in_child(body)
    assert "single-threaded" in result["message"]
    assert result["resuid"] == [0, 0, 0]  # refused before anything changed


def test_unconfined_child_can_do_all_of_it() -> None:
    """The control: same uid, no filter. Every probe that fails when confined works here, so
    the harness can tell a sandbox from none."""
    parent = os.getpid()

    def body() -> dict[str, object]:
        r, _ = os.pipe()
        drop_privileges(UID, GID)
        return {"probes": probes(parent, r), "memfd": outcome(new_memfd)}

    result = in_child(body)
    assert result["probes"] == {
        "socket": "ok",
        "open": "ok",
        "ptrace_parent": "EPERM",  # root's process: the kernel's own check, not the filter's
        "ptrace_nobody": "ESRCH",
        "fork": "ok",
        "prctl_other": "ok",
        "ioctl_other": "ok",
    }
    assert result["memfd"] == "ok"

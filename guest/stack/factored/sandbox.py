"""How a protection domain of the factored stack confines itself once it has started.

Each domain (driver, protocol, app) is its own process. It first acquires everything it will
ever need while still privileged (the driver its AF_PACKET socket, the protocol domain its
listening UNIX socket, everyone their eventfds and shared regions), then calls `confine`:

1. `drop_privileges`: no supplementary groups, real/effective/saved uid and gid set to an
   unprivileged id, and a check that nothing is left (all ids equal, no effective or permitted
   capability). A root process that a bug hands to an attacker could otherwise use the very
   syscalls the filter allows (`write` on an fd it still holds, `mmap`) with root's rights.
2. A seccomp allow-list (`build_filter`, `install_filter`): the domain keeps the syscalls an
   event loop over fds it already holds needs, and loses everything that reaches *new*
   resources or other processes: `socket`, `connect`, `bind`, `open*`, `ptrace`,
   `process_vm_*`, `execve*`, `clone*`/`fork`, `kill`, `setuid*`, `mount`, `unshare`.

The order matters: `setresuid`, `setgroups` and reading /proc/self/status (the capability check)
are all denied once the filter is in place, so the filter comes last. `PR_SET_NO_NEW_PRIVS` is
set first because an unprivileged process may only install a filter under it (it guarantees the
filter cannot be used to confuse a setuid program, and the domain cannot exec anyway).

Why denied calls fail with `EPERM` instead of killing the process: a denied call then surfaces
in Python as an ordinary `PermissionError`, which the domain can count and report and which a
test can assert on; and a harmless syscall missing from a policy fails soft instead of taking
the domain down. Several such soft failures are already known and tolerated by their callers:
glibc looking for translated `strerror` messages (`openat`), `shm.SharedRegion.peer_fd`
reopening through /proc (falls back to `dup`), `os.cpu_count` reading /sys. An attacker probing
the filter learns nothing from `EPERM` it could not learn from reading this file. Only a call
with a foreign architecture (an `int 0x80` i386 call, whose numbers mean different syscalls) is
killed outright: no legitimate code in a domain makes one, and its numbers would alias ours.
x32-ABI numbers (bit 30 set) share our architecture token, so they are refused explicitly.

Some syscalls are allowed only with particular arguments (`ArgRule`): `ioctl` only for
`FIONBIO`, because CPython's `socket.setblocking`/`settimeout` use it and the session server
makes every accepted connection non-blocking, while the rest of `ioctl` is a huge surface; and
`prctl` only for the two read-backs `confine` reports (`PR_GET_SECCOMP`,
`PR_GET_NO_NEW_PRIVS`).

Consequences for the code that runs confined:

- Every module the process will use must be imported *before* `confine`: an import opens files
  (`openat`), which is denied, so a lazy import fails with `PermissionError`/`ImportError`.
- The process must be single-threaded when it confines: `PR_SET_SECCOMP` filters only the
  calling thread, so `confine` refuses to run with other threads alive. Afterwards no thread can
  be started (`clone`/`clone3` are denied), so the domain stays single-threaded.

Everything here is stdlib-only (ctypes + struct): the guest image has no python3-seccomp.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# --- syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl (ABI: they never change) --------
SYSCALLS: Final[dict[str, int]] = {
    "read": 0,
    "write": 1,
    "open": 2,
    "close": 3,
    "fstat": 5,
    "poll": 7,
    "lseek": 8,
    "mmap": 9,
    "mprotect": 10,
    "munmap": 11,
    "brk": 12,
    "rt_sigaction": 13,
    "rt_sigprocmask": 14,
    "rt_sigreturn": 15,
    "ioctl": 16,
    "pread64": 17,
    "pwrite64": 18,
    "readv": 19,
    "writev": 20,
    "select": 23,
    "sched_yield": 24,
    "mremap": 25,
    "madvise": 28,
    "dup": 32,
    "nanosleep": 35,
    "getpid": 39,
    "socket": 41,
    "connect": 42,
    "accept": 43,
    "sendto": 44,
    "recvfrom": 45,
    "sendmsg": 46,
    "recvmsg": 47,
    "shutdown": 48,
    "bind": 49,
    "listen": 50,
    "socketpair": 53,
    "getsockopt": 55,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "exit": 60,
    "kill": 62,
    "fcntl": 72,
    "ftruncate": 77,
    "creat": 85,
    "gettimeofday": 96,
    "getrusage": 98,
    "times": 100,
    "ptrace": 101,
    "getuid": 102,
    "getgid": 104,
    "setuid": 105,
    "setgid": 106,
    "geteuid": 107,
    "getegid": 108,
    "getppid": 110,
    "setreuid": 113,
    "setregid": 114,
    "setgroups": 116,
    "setresuid": 117,
    "getresuid": 118,
    "setresgid": 119,
    "getresgid": 120,
    "sigaltstack": 131,
    "prctl": 157,
    "mount": 165,
    "gettid": 186,
    "tkill": 200,
    "futex": 202,
    "sched_getaffinity": 204,
    "restart_syscall": 219,
    "clock_gettime": 228,
    "clock_getres": 229,
    "clock_nanosleep": 230,
    "exit_group": 231,
    "epoll_wait": 232,
    "epoll_ctl": 233,
    "tgkill": 234,
    "openat": 257,
    "newfstatat": 262,
    "pselect6": 270,
    "ppoll": 271,
    "unshare": 272,
    "set_robust_list": 273,
    "epoll_pwait": 281,
    "accept4": 288,
    "eventfd2": 290,
    "epoll_create1": 291,
    "dup3": 292,
    "prlimit64": 302,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "seccomp": 317,
    "getrandom": 318,
    "memfd_create": 319,
    "execveat": 322,
    "statx": 332,
    "rseq": 334,
    "pidfd_open": 434,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "clone3": 435,
    "openat2": 437,
    "pidfd_getfd": 438,
}

# --- classic BPF (linux/bpf_common.h, linux/filter.h) --------------------------------------
_INSN: Final = struct.Struct("HBBI")  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
BPF_LD_W_ABS: Final = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K: Final = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K: Final = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
BPF_RET_K: Final = 0x06 | 0x00  # BPF_RET | BPF_K
BPF_MAXINSNS: Final = 4096  # the kernel refuses longer programs
_MAX_JUMP: Final = 255  # jt/jf are u8

# --- linux/seccomp.h, linux/audit.h --------------------------------------------------------
SECCOMP_RET_KILL_PROCESS: Final = 0x80000000
SECCOMP_RET_ERRNO: Final = 0x00050000
SECCOMP_RET_ALLOW: Final = 0x7FFF0000
SECCOMP_MODE_FILTER: Final = 2
AUDIT_ARCH_X86_64: Final = 0xC000003E
X32_SYSCALL_BIT: Final = 0x40000000
# struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }
SECCOMP_DATA_NR: Final = 0
SECCOMP_DATA_ARCH: Final = 4
SECCOMP_DATA_ARGS: Final = 16

# --- linux/prctl.h, asm-generic/ioctls.h -----------------------------------------------------
PR_SET_PDEATHSIG: Final = 1
PR_GET_SECCOMP: Final = 21
PR_SET_SECCOMP: Final = 22
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
FIONBIO: Final = 0x5421


@dataclass(frozen=True)
class ArgRule:
    """Allow `syscall` only when argument number `arg` is one of `values`, deny it otherwise.

    Only the low 32 bits of the argument are compared (the `seccomp_data` word at the lower
    address, x86_64 being little-endian), so a rule is only sound for arguments the kernel
    itself declares `int` or `unsigned int` and therefore truncates the same way: `prctl`'s
    option, `ioctl`'s command. Comparing 64 bits of a 32-bit argument would instead let a caller
    slip past the rule with junk in the upper half that the kernel ignores.
    """

    syscall: str
    arg: int
    values: frozenset[int]


#: What `confine` reads back after installing the filter, for its report.
READBACK: Final = ArgRule("prctl", 0, frozenset({PR_GET_SECCOMP, PR_GET_NO_NEW_PRIVS}))
#: `socket.setblocking`/`settimeout` (ioctl FIONBIO); every other ioctl stays denied.
NONBLOCKING: Final = ArgRule("ioctl", 1, frozenset({FIONBIO}))
#: `mprotect` may take write permission away, never grant it: a region the peer writes is
#: mapped read-only (`session.shm`), and making that mapping writable is the one way left to
#: scribble on the peer's ring. `prot` is an unsigned long, but the kernel fails any value with
#: bits above PROT_SEM set (EINVAL), so comparing its low 32 bits is sound. A single-threaded
#: CPython never needs a writable mprotect (glibc uses it to grow the heaps of other threads).
NO_WRITE_GRANT: Final = ArgRule(
    "mprotect", 2, frozenset({0, mmap.PROT_READ, mmap.PROT_EXEC, mmap.PROT_READ | mmap.PROT_EXEC})
)


#: `mmap` only at offset 0: all a domain maps once confined is anonymous memory and whole shared
#: regions. It matters to the protocol domain over `--link uring`, which holds an io_uring fd:
#: the ring's submission entries, written by the launcher, live at offset IORING_OFF_SQES
#: (0x10000000) of that fd, and a domain that could map them writable could rewrite the one
#: operation it may submit (`uring.py`). The offset is an unsigned long and only its low 32 bits
#: are compared: sound here because io_uring decodes an offset by its bits 27..31 alone (the
#: other bits are ignored or refused), so no offset with zero low bits reaches the entries.
MAP_FROM_START: Final = ArgRule("mmap", 5, frozenset({0}))


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return _INSN.pack(code, jt, jf, k)


def _number(name: str) -> int:
    try:
        return SYSCALLS[name]
    except KeyError:
        raise ValueError(f"unknown syscall {name!r} (not in sandbox.SYSCALLS)") from None


def build_filter(
    allowed: Iterable[str],
    deny_errno: int = errno.EPERM,
    rules: Iterable[ArgRule] = (),
) -> bytes:
    """A seccomp program allowing exactly `allowed` (plus `rules`), failing anything else with
    `deny_errno`.

    Layout: architecture check (foreign arch -> kill), x32 numbers -> errno, one block per
    `ArgRule`, then for each allowed number a `JEQ nr, jt=0, jf=1` followed by its own
    `RET ALLOW`, and a final `RET ERRNO`. The pairs cost one more instruction per syscall than
    jumping to a shared `RET ALLOW`, but every jump is 0 or 1 so the program stays valid for
    any list length (jump offsets are 8 bits: a shared target stops being reachable after
    ~255 comparisons). Numbers are emitted in ascending order, which puts `read` and `write`,
    the hottest calls, first.
    """
    if not 0 < deny_errno <= 0xFFFF:
        raise ValueError(f"deny_errno must be a positive errno, not {deny_errno}")
    numbers = sorted({_number(name) for name in allowed})
    deny = SECCOMP_RET_ERRNO | deny_errno
    prog = [
        _insn(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        _insn(BPF_JEQ_K, AUDIT_ARCH_X86_64, jt=1, jf=0),
        _insn(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        _insn(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        _insn(BPF_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1),
        _insn(BPF_RET_K, deny),
    ]
    ruled: set[int] = set()
    for rule in rules:
        nr = _number(rule.syscall)
        if nr in numbers or nr in ruled:
            raise ValueError(f"syscall {rule.syscall!r} is both allowed and ruled (or ruled twice)")
        if not 0 <= rule.arg < 6:
            raise ValueError(f"syscalls have arguments 0..5, not {rule.arg}")
        values = sorted(rule.values)
        if not values or len(values) > _MAX_JUMP - 3:
            raise ValueError(f"rule for {rule.syscall!r} needs 1..{_MAX_JUMP - 3} values")
        if not all(0 <= v <= 0xFFFFFFFF for v in values):
            raise ValueError(f"rule for {rule.syscall!r}: values must fit in 32 bits")
        ruled.add(nr)
        # JEQ nr -> LD arg; one JEQ per value -> ALLOW; RET ERRNO; RET ALLOW. Both exits return,
        # so the accumulator still holds `nr` for whatever follows the block.
        prog.append(_insn(BPF_JEQ_K, nr, jt=0, jf=len(values) + 3))
        prog.append(_insn(BPF_LD_W_ABS, SECCOMP_DATA_ARGS + 8 * rule.arg))
        prog.extend(_insn(BPF_JEQ_K, v, jt=len(values) - i) for i, v in enumerate(values))
        prog.append(_insn(BPF_RET_K, deny))
        prog.append(_insn(BPF_RET_K, SECCOMP_RET_ALLOW))
    for nr in numbers:
        prog.append(_insn(BPF_JEQ_K, nr, jt=0, jf=1))
        prog.append(_insn(BPF_RET_K, SECCOMP_RET_ALLOW))
    prog.append(_insn(BPF_RET_K, deny))
    if len(prog) > BPF_MAXINSNS:
        raise ValueError(f"filter has {len(prog)} instructions, the kernel takes {BPF_MAXINSNS}")
    return b"".join(prog)


# --- libc via ctypes ----------------------------------------------------------------------
class _SockFprog(ctypes.Structure):
    """struct sock_fprog { unsigned short len; struct sock_filter *filter; }"""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


# Resolved at import: after `confine` nothing may need to load or look up anything.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PRCTL = getattr(_LIBC, "prctl", None)
if _PRCTL is not None:
    _PRCTL.argtypes = (ctypes.c_int, *(ctypes.c_ulong,) * 4)
    _PRCTL.restype = ctypes.c_int


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2), raising OSError with the call's errno (ctypes does not raise by itself)."""
    if _PRCTL is None:
        raise OSError(errno.ENOSYS, "no prctl in this libc")
    ctypes.set_errno(0)
    ret = _PRCTL(option, arg2, arg3, arg4, arg5)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return ret


def install_filter(program: bytes) -> None:
    """Set no_new_privs, then install `program` as this thread's seccomp filter (irrevocable).

    Filters stack: a process already under one (a container runtime's) gets the stricter of
    both for every call.
    """
    if not program or len(program) % _INSN.size:
        raise ValueError(f"a filter is a whole number of {_INSN.size}-byte instructions")
    count = len(program) // _INSN.size
    if count > BPF_MAXINSNS:
        raise ValueError(f"filter has {count} instructions, the kernel takes {BPF_MAXINSNS}")
    # Both objects must outlive the prctl call: the kernel copies the program during it.
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.addressof(buf))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    del fprog, buf  # only now


# --- privileges ---------------------------------------------------------------------------
def _proc_status() -> dict[str, str]:
    """/proc/self/status as a dict. Only callable before the filter (it opens a file)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def die_with_parent(parent: int) -> None:
    """Be SIGKILLed when the process that forked this one dies (prctl PR_SET_PDEATHSIG), and
    exit now if `parent` is gone already: a launcher killed outright runs none of its stopping
    code, and a domain outliving it would keep running on the NIC. A change of credentials
    clears the setting, so `confine` sets it again after its drop."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _drop_privileges(uid: int, gid: int) -> dict[str, int]:
    """`drop_privileges`, returning the capability sets it verified (for `confine`'s report)."""
    if uid <= 0 or gid <= 0:
        # gid 0 too: group root owns devices and files (and group-writable ones exist).
        raise ValueError(f"refusing to 'drop' to uid {uid} / gid {gid}: must be non-root, > 0")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    problems = []
    if os.getresuid() != (uid, uid, uid):
        problems.append(f"uids are {os.getresuid()}")
    if os.getresgid() != (gid, gid, gid):
        problems.append(f"gids are {os.getresgid()}")
    if os.getgroups():
        problems.append(f"supplementary groups {os.getgroups()}")
    status = _proc_status()
    caps = {key: int(status.get(key, "0"), 16) for key in ("CapEff", "CapPrm", "CapAmb")}
    problems.extend(f"{key} is {value:#x}" for key, value in caps.items() if value)
    try:  # the classic check: a process that can become root again has dropped nothing
        os.setresuid(0, 0, 0)
    except PermissionError:
        pass
    else:
        problems.append("setresuid(0) still succeeds")
    if problems:
        raise PermissionError(f"privileges not fully dropped: {'; '.join(problems)}")
    return caps


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`/`gid` for good: no supplementary groups, real = effective = saved ids, and
    verified to hold no capability (changing all uids away from 0 clears them). Raises
    PermissionError naming whatever was left, ValueError for uid or gid 0."""
    _drop_privileges(uid, gid)


# --- policies -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """What a domain may still do once confined: plain syscall names, plus argument-checked
    ones (`ArgRule`)."""

    name: str
    allow: frozenset[str]
    rules: tuple[ArgRule, ...] = ()


#: What CPython needs to run an event loop over fds it already holds and import nothing new:
#: memory, signals, time, polling, futexes (the GIL), fd plumbing, its own ids.
BASE: Final = frozenset(
    {
        "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "fstat",
        "newfstatat", "statx", "lseek", "mmap", "munmap", "mremap", "madvise",
        "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "futex",
        "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
        "getresgid", "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
        "gettimeofday", "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl",
        "epoll_wait", "epoll_pwait", "sched_yield", "sched_getaffinity", "getrandom", "exit",
        "exit_group", "fcntl", "dup", "dup3", "restart_syscall", "rseq", "set_robust_list",
        "prlimit64", "getrusage", "times",
    }
)  # fmt: skip

#: Owns an AF_PACKET socket (and its mmap'd rings) opened before confinement.
DRIVER: Final = Policy(
    "driver",
    BASE | {"sendto", "recvfrom", "sendmsg", "recvmsg", "getsockopt"},
    (NONBLOCKING, NO_WRITE_GRANT),
)
#: Serves applications on a UNIX socket created before confinement; creates a sealed memfd
#: region pair and three eventfd doorbells per application socket (`session.channel`).
PROTOCOL: Final = Policy(
    "protocol",
    BASE - {"mmap"}
    | {
        "accept4", "accept", "sendmsg", "recvmsg", "sendto", "recvfrom", "getsockopt",
        "shutdown", "memfd_create", "ftruncate", "eventfd2",
    },
    (NONBLOCKING, NO_WRITE_GRANT, MAP_FROM_START),
)  # fmt: skip
#: An application talking to the protocol domain over its session socket.
APP: Final = Policy(
    "app",
    BASE | {"sendmsg", "recvmsg", "sendto", "recvfrom", "shutdown", "getsockopt"},
    (NONBLOCKING, NO_WRITE_GRANT),
)
#: The protocol domain over `--link uring`: `PROTOCOL` plus `io_uring_enter` on the send-only
#: ring the launcher made (`io_uring_setup` and `io_uring_register` stay denied: a ring of its
#: own would run operations this filter never sees).
PROTOCOL_URING: Final = Policy(
    "protocol-uring", PROTOCOL.allow | {"io_uring_enter"}, PROTOCOL.rules
)
POLICIES: Final[dict[str, Policy]] = {
    "driver": DRIVER,
    "protocol": PROTOCOL,
    "protocol-uring": PROTOCOL_URING,
    "app": APP,
}


def confine(uid: int, gid: int, policy: Policy) -> dict[str, object]:
    """Drop to `uid`/`gid`, then install `policy`'s seccomp filter; irrevocable.

    Every module the process will ever use must be imported before this call: imports open
    files, and `openat` is denied afterwards. The process must be single-threaded (the filter
    binds only the calling thread). Returns what was done, read back from the kernel, for the
    domain's report.
    """
    program = build_filter(policy.allow, rules=(*policy.rules, READBACK))  # errors: change nothing
    threads = int(_proc_status().get("Threads", "0"))
    if threads != 1 or threading.active_count() != 1:
        raise RuntimeError(
            f"confine needs a single-threaded process ({threads} threads): PR_SET_SECCOMP would "
            "leave the other threads unconfined"
        )
    parent = os.getppid()
    caps = _drop_privileges(uid, gid)
    die_with_parent(parent)  # the drop cleared it
    install_filter(program)
    return {
        "uid": uid,
        "gid": gid,
        "policy": policy.name,
        "allowed": len(policy.allow) + len(policy.rules),
        "instructions": len(program) // _INSN.size,
        "no_new_privs": _prctl(PR_GET_NO_NEW_PRIVS),
        "seccomp_mode": _prctl(PR_GET_SECCOMP),
        "cap_eff": caps["CapEff"],
        "cap_prm": caps["CapPrm"],
    }


def supported() -> str | None:
    """None if this process can `confine` itself, else why not (for callers and test skips)."""
    if sys.platform != "linux":
        return f"seccomp is Linux-only (platform {sys.platform})"
    if os.uname().machine != "x86_64":
        return f"syscall numbers here are x86_64's (machine {os.uname().machine})"
    if os.geteuid() != 0:
        return "dropping to another uid needs root"
    try:
        _prctl(PR_GET_SECCOMP)
    except OSError as exc:
        return f"kernel without seccomp: {exc}"
    return None


def describe_wait_status(status: int) -> str:
    """How a domain ended, from its `waitpid` status: "exit status N" or "killed by signal X"
    (what the launcher and the traffic tool report when one of their domains dies)."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"

"""A long fuzz run as a benchmark: `python3 -m guest.bench.fuzz --seconds 60 --seed 1`.

Why a benchmark and not only a property test: `NetStack.receive_frame` promises never to raise
on bad input, and tests/unit/test_core_fuzz.py checks that on a fresh stack for a few hundred
short frame sequences. The bugs that survive that need *state* (a connection with data in
flight both ways, SACK holes, fragments waiting, ARP resolutions pending, a listener's backlog)
and *time* (timers firing between hostile frames), and only a long run against a busy stack
finds them. So this runs for minutes and prints figures, and a seed reproduces every frame.

The testbed: stack A (the one attacked, `strict=True` so that an internal error surfaces with
its traceback instead of becoming a counter) and its honest peer B on `stack_sim`'s in-memory
Ethernet (with a little loss, duplication and reordering while fuzzing). A holds live state
worth attacking: an ESTABLISHED connection to B with data flowing both ways (with or without
timestamps/SACK/window scaling; its readers pause now and then so windows close; every so
often it is closed gracefully from either end or both, so FIN-WAIT, CLOSING, LAST-ACK and
TIME-WAIT are attacked too, and a new one opens), a listener with a small backlog, a
connection from an *attacker* host that the fuzz controls entirely (so gaps it leaves are never
filled, as in a real attack), a bound UDP socket, a ping socket, a connection in SYN-SENT to a
host that never answers (so ARP resolution is pending too), ARP entries, and fragments in
reassembly. A's buffer sizes, Nagle, delayed ACKs, keep-alive, TSO and checksum offload vary
with the seed (`stack_variant`).

Every step feeds A one fuzz *case* (one frame, or a burst) from a seeded `random.Random`
through one of the `MUTATORS`, polls, lets the applications on both ends write and read, and
advances simulated time (mostly by a millisecond, sometimes by seconds or a minute, so
retransmission, delayed-ACK, persist, keep-alive, TIME-WAIT, reassembly-expiry and ARP timers
fire). The frames come from `guest.testing.fuzz_frames`: valid ones are built with the wire
layer's own `emit` functions and aimed at the live state (the live connection's 4-tuple with
plausible and implausible sequence numbers, the backlog's half-open connections, the SYN-SENT
connection's ISN in a quoted ICMP error, ...), then mutated. The CPU the stack spends per
frame is measured by mutator, so a cost that grows with what earlier frames left behind shows
up in the figures.

A run fails (exit status 1) when:
* any exception escapes the stack (or `internal-error` is counted);
* B receives bytes A's application never wrote (A's send path was corrupted: no fuzz frame
  reaches B, so nothing legitimate explains it);
* A's application receives bytes B never wrote although no fuzz frame touched that connection's
  receive state (TCP has no authentication, so a well-aimed segment *may* inject data; that is
  detected, counted, and the connection is replaced);
* the live connection resets, closes or stalls although no fuzz frame ever reached it;
* an internal invariant breaks (sequence variables out of order, a closed connection left in
  the table, a queue over its bound, ...), or the stacks never settle (a timer or ACK loop),
  or a frame costs more than `SLOW_FRAME_SECONDS` of CPU, or a step runs for `--hang` seconds;
* after the fuzzing, the stack no longer works: the live connection (or, if the fuzz
  legitimately broke it, a new one accepted by the attacked listener) must carry a fresh chunk
  byte-exact both ways, and UDP and ping must still be answered.

The report is one JSON line on stdout (seed, frames, frames/s, per-mutator counts, drop-reason
histogram, the live connection's figures, internal errors, post-fuzz checks), then a table.
A failure prints the seed, the frame index and its hex; `--replay SEED:INDEX` re-runs the same
deterministic sequence up to that frame (and the step it belongs to) to reproduce it, and
`--frame-hex` feeds one frame to a freshly built testbed.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import signal
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Final, TextIO

from guest.stack.core.events import (
    TERMINAL_EVENTS,
    Accepted,
    Connected,
    EchoReplyReadable,
    PeerClosed,
    Readable,
    StackEvent,
    UdpReadable,
    UdpUnreachable,
)
from guest.stack.core.netstack import NetStack
from guest.stack.core.tcp_mux import TcpSocket
from guest.stack.tcp import TcpConfig, TcpState
from guest.stack.wire.arp import OP_REPLY, ArpRepr
from guest.stack.wire.ethernet import ETHERTYPE_ARP, EthernetRepr
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN
from guest.stack.wire.ipv4 import PROTO_UDP, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr
from guest.testing.fuzz_frames import (
    A_IP,
    ATTACKER_IP,
    ATTACKER_STR,
    B_IP,
    GATEWAY,
    LISTEN_BACKLOG,
    LISTEN_PORT,
    LIVE_PORT,
    MUTATORS,
    PING_IDENT,
    PLAIN_PORT,
    PROBE_PORT,
    SILENT_IP,
    SUBNET,
    UDP_PORT,
    Case,
    FrameFactory,
    pool_mac,
)
from guest.testing.stack_sim import IP_A, IP_B, MAC_A, MAC_B, Host, LinkConfig, Network

#: A frame costing more CPU than this (in `receive_frame` and the `poll` after it) fails the
#: run: a cost that grows with what earlier frames left behind (an algorithmic-complexity
#: bug), long before the watchdog's wall-clock limit for a step that never ends.
SLOW_FRAME_SECONDS: Final = 2.0
#: B refreshes A's ARP entry this often (see `_announce_b`).
ANNOUNCE_INTERVAL: Final = 0.2
#: Application data kept in flight (written, not yet read) per direction, at most: above the
#: smaller buffer sizes, so that send buffers fill up and paused readers close the window.
MAX_IN_FLIGHT: Final = 96 * 1024
#: Impairments of the link while fuzzing (none during the final checks): loss recovery,
#: SACK and reordering paths run on the live connection too. With steps of ~1 ms and a 2 ms
#: delay, data is in flight in both directions.
FUZZ_LINK: Final = LinkConfig(
    delay=0.002, bandwidth=None, loss=0.005, duplicate=0.005, reorder=0.01, reorder_delay=0.004
)
CLEAN_LINK: Final = LinkConfig(delay=0.002, bandwidth=None)
#: A stream with bytes outstanding and no progress for this long (and this many steps) stalled.
STALL_SECONDS: Final = 60.0
STALL_STEPS: Final = 2000
INVARIANT_EVERY: Final = 500
#: The cyclic garbage collector runs every this many steps, between them, not whenever an
#: allocation count says so: a collection inside a timed frame would make it look slow.
COLLECT_EVERY: Final = 2000
#: After the fuzzing: let everything settle (half-open connections time out after ~127 s).
QUIESCE_SECONDS: Final = 150.0
CHECK_BYTES: Final = 128 * 1024

_MASK: Final = 0xFFFFFFFF
_PATTERN_LEN: Final = 65521  # prime: a stream shifted by any amount no longer matches


class _Hang(BaseException):
    """Raised into the main thread by the watchdog when one step runs too long.

    A BaseException so that `NetStack.receive_frame`'s `except Exception` does not count it as
    an internal error: it is ours, not the stack's.
    """


@dataclass(slots=True)
class Failure:
    """Why a run failed, and what to replay."""

    what: str
    stage: str
    index: int
    mutator: str | None
    kind: str | None
    checksum_ok: bool | None
    frame: bytes | None
    detail: str

    def as_dict(self, seed: int) -> dict[str, object]:
        """For the report; `replay` is the command-line option that reproduces it."""
        frame = self.frame or b""
        lines = self.detail.strip().splitlines()
        if self.stage == "verify":
            replay = f"--seed {seed} --frames {self.index}"  # the whole run, then the checks
        else:
            replay = f"--replay {seed}:{self.index}"
        out: dict[str, object] = {
            "what": self.what,
            "stage": self.stage,
            "seed": seed,
            "index": self.index,
            "mutator": self.mutator,
            "kind": self.kind,
            "checksum_ok": self.checksum_ok,
            "frame_len": len(frame),
            "frame_hex": frame.hex(),
            "detail": lines[-1] if lines else "",
            "replay": replay,
        }
        if len(lines) > 1:
            out["traceback"] = self.detail
        return out


class _Stream:
    """One direction of a connection: what the writer wrote against what the reader got.

    The bytes are a pattern of prime period, so any shift or foreign byte shows; after
    `start_chunk` the stream continues with a given chunk (the post-fuzz transfer).
    """

    __slots__ = (
        "chunk",
        "chunk_at",
        "mismatch",
        "pattern",
        "phase",
        "progress_at",
        "progress_step",
        "received",
        "written",
    )

    def __init__(self, pattern: bytes, phase: int) -> None:
        self.pattern = pattern  # _PATTERN_LEN bytes, doubled
        self.phase = phase
        self.written = 0
        self.received = 0
        self.mismatch: str | None = None
        self.chunk: bytes | None = None
        self.chunk_at = 0
        self.progress_at = 0.0
        self.progress_step = 0

    def expected(self, offset: int, n: int) -> bytes:
        """The bytes at stream offsets [offset, offset + n)."""
        parts = []
        end = offset + n
        while offset < end:
            if self.chunk is not None and offset >= self.chunk_at:
                rel = offset - self.chunk_at
                piece = self.chunk[rel : rel + end - offset]
                if not piece:
                    parts.append(b"\x00" * (end - offset))  # beyond the chunk: cannot match
                    break
            else:
                stop = end if self.chunk is None else min(end, self.chunk_at)
                at = (offset + self.phase) % _PATTERN_LEN
                piece = self.pattern[at : at + min(stop - offset, _PATTERN_LEN)]
            parts.append(piece)
            offset += len(piece)
        return b"".join(parts)

    def take(self, data: bytes, now: float, step: int) -> None:
        """The reader got `data`; note a mismatch (the first one only)."""
        if self.mismatch is None:
            if self.received + len(data) > self.written:
                self.mismatch = f"{self.received + len(data) - self.written} bytes never written"
            elif data != self.expected(self.received, len(data)):
                self.mismatch = f"bytes differ in stream offsets [{self.received}, +{len(data)})"
        self.received += len(data)
        self.progress_at = now
        self.progress_step = step

    def start_chunk(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.chunk_at = self.written

    @property
    def chunk_done(self) -> bool:
        return self.chunk is not None and self.received >= self.chunk_at + len(self.chunk)

    @property
    def outstanding(self) -> int:
        return self.written - self.received


class _Pair:
    """A connection between A and B as both applications see it."""

    def __init__(self, a_handle: int | None, ab: _Stream, ba: _Stream, b_port: int) -> None:
        self.a_handle = a_handle
        self.b_handle: int | None = None
        self.a_port = 0  # A's local port once known
        self.b_port = b_port
        #: Readers pause now and then (until these times), so that windows close.
        self.a_paused_until = 0.0
        self.b_paused_until = 0.0
        #: When the applications close it gracefully and open a new one.
        self.retire_at = math.inf
        self.a_connected = False
        self.ab = ab  # A writes, B reads
        self.ba = ba  # B writes, A reads
        self.broken: str | None = None
        #: A fuzz frame reached A's end of the connection / changed what A received.
        self.touched = False
        self.injected = False

    @property
    def up(self) -> bool:
        return self.a_connected and self.b_handle is not None and self.broken is None


class _CapturingNetwork(Network):
    """`stack_sim.Network` keeping the last frames B sent, for the peer-replay mutator."""

    def __init__(self, a: NetStack, b: NetStack, link: LinkConfig, seed: int) -> None:
        super().__init__(a, b, link, seed=seed)
        self.from_b: deque[bytes] = deque(maxlen=256)

    def _send(self, host: Host, frames: list[bytearray]) -> None:
        if host is self.b:
            self.from_b.extend(map(bytes, frames))
        super()._send(host, frames)


def stack_variant(seed: int) -> dict[str, object]:
    """How stack A is configured for `seed`: buffer sizes, Nagle, delayed ACKs, keep-alive,
    TSO and checksum offload vary from seed to seed, so that different seeds reach different
    code (a full send buffer, zero windows, keep-alive probes, super-segments)."""
    r = random.Random(f"stack-variant-{seed}")
    return {
        "recv_buffer_size": r.choice([32 * 1024, 64 * 1024, 256 * 1024]),
        "send_buffer_size": r.choice([32 * 1024, 64 * 1024, 256 * 1024]),
        "nodelay": r.random() < 0.7,
        "delayed_ack": r.random() < 0.8,
        "quickack_on_psh": r.random() < 0.3,
        "sack_recovery": r.random() < 0.8,
        "keepalive_idle": 20.0 if r.random() < 0.5 else None,
        "tso_max_size": 64000 if r.random() < 0.3 else 0,
        "tx_checksum_offload": r.random() < 0.3,
    }


#: What the attacker's SYN offers: what Linux offers, so that A keeps SACK state for it too.
_SYN_OPTIONS: Final[dict[str, object]] = {"mss": 1460, "window_scale": 7, "sack_permitted": True}


class FuzzBench:
    """The testbed, the fuzz loop, the checks and the report."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.variant = variant = stack_variant(seed)
        config = TcpConfig(
            recv_buffer_size=int(variant["recv_buffer_size"]),  # type: ignore[call-overload]
            send_buffer_size=int(variant["send_buffer_size"]),  # type: ignore[call-overload]
            nodelay=bool(variant["nodelay"]),
            delayed_ack=bool(variant["delayed_ack"]),
            quickack_on_psh=bool(variant["quickack_on_psh"]),
            sack_recovery=bool(variant["sack_recovery"]),
            keepalive_idle=variant["keepalive_idle"],  # type: ignore[arg-type]
            keepalive_interval=5.0,
            keepalive_probes=3,
        )
        self.a = NetStack(
            MAC_A,
            IP_A + "/24",
            gateway=GATEWAY,
            tcp_config=config,
            secret=b"fuzz-a-%d" % seed,
            tso_max_size=int(variant["tso_max_size"]),  # type: ignore[call-overload]
            tx_checksum_offload=bool(variant["tx_checksum_offload"]),
            strict=True,
        )
        self.b = NetStack(MAC_B, IP_B + "/24", secret=b"fuzz-b-%d" % seed, strict=True)
        self.net = _CapturingNetwork(self.a, self.b, FUZZ_LINK, seed)
        self.net.a.on_event(self._on_a)
        self.net.b.on_event(self._on_b)
        pattern = self.rng.randbytes(_PATTERN_LEN)
        self._pattern = pattern + pattern
        self.factory = FrameFactory(self.rng, self)

        # Progress and figures.
        self.index = 0  # fuzz frames fed so far (the index of the last one)
        self.steps = 0
        self.stage = "setup"
        self.current: tuple[int, Case, bytes] | None = None
        self.failure: Failure | None = None
        self.mutator_frames: Counter[str] = Counter({m: 0 for m in MUTATORS})
        self.mutator_cases: Counter[str] = Counter({m: 0 for m in MUTATORS})
        self.kinds: Counter[str] = Counter()
        self.checksum_ok = Counter({"true": 0, "false": 0})
        self.reconnects: Counter[str] = Counter()
        self.connections = 0
        #: Stream bytes the readers checked against what the writers wrote, over all pairs.
        self.verified_ab = 0
        self.verified_ba = 0
        self.injections = 0
        self.events_a: Counter[str] = Counter()
        #: CPU seconds spent in `receive_frame`, per mutator, and the slowest frames.
        self.cpu: Counter[str] = Counter()
        self.cpu_max: dict[str, float] = {}
        self.slowest: list[tuple[float, int, str, str]] = []  # (seconds, index, mutator, kind)
        self.last_beat = time.monotonic()
        self.elapsed = 0.0
        self.interrupted = False

        # Application state.
        self.live: _Pair | None = None
        self.check: _Pair | None = None  # the post-fuzz connection through A's listener
        self.expect_accept: str | None = None
        self.strays: deque[int] = deque()
        self.probe: int | None = None
        self.probe_port = 0
        self.probe_at = 0.0
        #: The attacker's connection (A's handle once accepted) and its remote port.
        self.attacker: int | None = None
        self.attacker_port = 0
        self.attacker_at = 0.0
        self.attacker_next = 0  # where its next burst of out-of-order bytes goes
        self.attackers = 0
        self.ping_seq = 0
        self.next_ping = 0.0
        self.next_announce = 0.0
        self.udp_unreachable = 0
        self.writing = True
        #: Handles of live connections being closed gracefully (rotated out), per side.
        self.retired_a: set[int] = set()
        self.retired_b: set[int] = set()
        self.rotations: Counter[str] = Counter()

        a, b = self.a, self.b
        self.b_listen = b.tcp_listen(LIVE_PORT, backlog=16)
        # The listener takes the mux's configuration when created: swap it in for a moment.
        full = b.tcp.config
        b.tcp.config = replace(
            full, timestamps=False, sack=False, window_scaling=False, recv_buffer_size=65535
        )
        self.b_listen_plain = b.tcp_listen(PLAIN_PORT, backlog=16)
        b.tcp.config = full
        self.a_listen = a.tcp_listen(LISTEN_PORT, backlog=LISTEN_BACKLOG)
        self.a_udp = a.udp_bind(UDP_PORT)
        self.a_ping = a.icmp_bind(PING_IDENT)

    # ------------------------------------------------------------------ live state

    def live_socket(self) -> TcpSocket | None:
        """A's end of the live connection (the object the fuzz aims at)."""
        live = self.live
        if live is None or not live.a_port:
            return None
        return self.a.tcp.conns.get((B_IP, live.b_port, live.a_port))

    def attacker_socket(self) -> TcpSocket | None:
        if self.attacker is None:
            return None
        return self.a.tcp.conns.get((ATTACKER_IP, self.attacker_port, LISTEN_PORT))

    def _control(self, kind: str, frame: bytes) -> None:
        """Feed A a frame of the attacker's own traffic (handshake, ACKs): part of the
        deterministic sequence, not a fuzz frame; named in a failure report all the same."""
        self.current = (self.index, Case("control", kind, [frame], False), frame)
        self.a.receive_frame(frame, self.net.now)

    def _attacker_segment(self, sock: TcpSocket | None, flags: TcpFlags, **kw: object) -> bytes:
        conn = sock.conn if sock is not None else None
        seg = TcpRepr(
            self.attacker_port,
            LISTEN_PORT,
            conn.rcv_nxt & _MASK if conn is not None else self.rng.getrandbits(32),
            conn.snd_max & _MASK if conn is not None else 0,
            flags,
            0xFFFF,
            timestamp=(int(self.net.now * 1000) & _MASK, 0),
            **kw,  # type: ignore[arg-type]
        )
        built = self.factory.build_tcp("attacker", ATTACKER_IP, A_IP, seg, b"", MAC_A)
        return bytes(built.frame)

    def _attack(self) -> None:
        """Keep the attacker's connection up: open it (answering A's ARP request first, so
        that A's segments leave), and acknowledge A's data now and then."""
        r = self.rng
        now = self.net.now
        if self.attacker is None:
            if now < self.attacker_at:
                return
            self.attacker_at = now + 1.0
            mac = pool_mac(ATTACKER_IP)
            buf = bytearray(ETH_LEN + 28)
            EthernetRepr(mac, MAC_A, ETHERTYPE_ARP).emit(buf, 0)
            ArpRepr(OP_REPLY, mac, ATTACKER_IP, MAC_A, A_IP).emit(buf, ETH_LEN)
            self._control("attacker-arp", bytes(buf))
            self.attacker_port = r.randint(1024, 65535)
            self._control(
                "attacker-syn", self._attacker_segment(None, TcpFlags.SYN, **_SYN_OPTIONS)
            )
            self.net.flush()
            sock = self.a.tcp.conns.get((ATTACKER_IP, self.attacker_port, LISTEN_PORT))
            if sock is None or sock.conn.state is not TcpState.SYN_RECEIVED:
                return  # the backlog is full of half-open connections: try again later
            ack = self._attacker_segment(sock, TcpFlags.ACK)
            self._control("attacker-ack", ack)  # acknowledges A's ISN: established
            self.net.flush()  # A's application accepts it (see `_on_a`)
            return
        sock = self.attacker_socket()
        if sock is None:
            return
        if r.random() < 0.2:  # A writes to it, so that there is data to (selectively) ACK
            with contextlib.suppress(OSError):
                self.a.tcp_send(self.attacker, r.randbytes(r.randint(1, 2000)), now)
        if r.random() < 0.05:
            self._control("attacker-ack", self._attacker_segment(sock, TcpFlags.ACK))

    def probe_socket(self) -> TcpSocket | None:
        if self.probe is None or not self.probe_port:
            return None
        return self.a.tcp.conns.get((SILENT_IP, PROBE_PORT, self.probe_port))

    def _new_pair(self, a_handle: int | None, b_port: int = LIVE_PORT) -> _Pair:
        r = self.rng
        pair = _Pair(
            a_handle,
            _Stream(self._pattern, r.randrange(_PATTERN_LEN)),
            _Stream(self._pattern, r.randrange(_PATTERN_LEN)),
            b_port,
        )
        now = self.net.now
        pair.ab.progress_at = pair.ba.progress_at = now
        pair.ab.progress_step = pair.ba.progress_step = self.steps
        if a_handle is not None:
            pair.a_port = _port_of(str(self.a.socket_info(a_handle)["local"]))
        return pair

    def _open_live(self) -> None:
        self.connections += 1
        port = LIVE_PORT if self.rng.random() < 0.7 else PLAIN_PORT
        handle = self.a.tcp_connect(IP_B, port, self.net.now)
        self.live = live = self._new_pair(handle, port)
        live.retire_at = self.net.now + self.rng.uniform(5.0, 60.0)

    def _retire_live(self) -> None:
        """Close the live connection gracefully (A first, B first, or both at once) and open a
        new one: the old one's FIN exchange, TIME-WAIT and LAST-ACK happen under fire too."""
        old = self.live
        assert old is not None and old.a_handle is not None and old.b_handle is not None
        who = self.rng.choice(["a", "b", "both"])
        self.rotations[who] += 1
        if who == "b":
            self.retired_a.add(old.a_handle)
        else:
            self.a.tcp_close(old.a_handle)
        if who == "a":
            self.retired_b.add(old.b_handle)
        else:
            self.b.tcp_close(old.b_handle)
        self._open_live()

    def _drop_live(self, reason: str) -> None:
        """Replace the live connection (the fuzz broke it, legitimately)."""
        live = self.live
        assert live is not None
        self.reconnects[reason] += 1
        if live.a_handle is not None:
            self.a.tcp_abort(live.a_handle)
        if live.b_handle is not None:
            self.b.tcp_abort(live.b_handle)
        self._open_live()

    def _broken(self, pair: _Pair, reason: str) -> None:
        """The live connection stopped working: legitimate only if the fuzz touched it."""
        if pair.broken is not None:
            return
        pair.broken = reason
        if pair is self.live and not pair.touched and self.writing:
            self._fail(
                "live-broken",
                f"the live connection broke ({reason}) although no fuzz frame reached it",
            )

    def _setup(self) -> None:
        """Bring the live state up: connection with data in flight, probe, ARP, fragments."""
        net = self.net
        self._open_live()
        self._announce_b()
        net.run(until=0.05, max_steps=net.stats.steps + 10_000)
        live = self.live
        if live is None or not live.up:
            raise RuntimeError("testbed: the live connection did not come up")
        self._open_probe()
        for _ in range(20):
            self._app_writes()
            net.run(until=net.now + 0.001, max_steps=net.stats.steps + 10_000)
        # Fragments in reassembly: first pieces of datagrams whose rest never comes.
        for i in range(3):
            src = SUBNET | (10 + i)
            ip = Ipv4Repr(src, A_IP, PROTO_UDP, 0, 64, 100 + i, more_frags=True)
            built = self.factory.build_ipv4(
                "frag", ip, self.rng.randbytes(64), src_mac=pool_mac(src), dst_mac=MAC_A
            )
            self.a.receive_frame(bytes(built.frame), net.now)
        net.flush()

    def initial_state(self) -> dict[str, object]:
        live = self.live_socket()
        return {
            "live": str(live.conn.state) if live is not None else None,
            "in_flight_a_to_b": live.conn.send_queued if live is not None else 0,
            "arp_entries": len(self.a.arp_table()),
            "arp_pending": len(self.a.arp.pending_hops()),
            "fragments_pending": len(self.a.reassembler),
            "tcp_connections": len(self.a.tcp.conns),
            "listeners": len(self.a.tcp.listeners),
            "udp_sockets": len(self.a.udp.ports),
        }

    # ------------------------------------------------------------------ applications

    def _on_a(self, host: Host, ev: StackEvent) -> None:
        a = self.a
        h = ev.handle
        kind = type(ev)
        self.events_a[kind.__name__] += 1
        live = self.live
        check = self.check
        for pair in (live, check):
            if pair is None or h != pair.a_handle:
                continue
            if kind is Connected:
                pair.a_connected = True
            elif kind is Readable:
                if self.net.now >= pair.a_paused_until:
                    self._a_read(pair)
            elif kind is PeerClosed:
                self._broken(pair, "peer-closed")
            elif isinstance(ev, TERMINAL_EVENTS):
                self._broken(pair, kind.__name__.lower())
            return
        if h in self.retired_a:
            if kind is Readable:
                a.tcp_recv(h)
            elif kind is PeerClosed or isinstance(ev, TERMINAL_EVENTS):
                self.retired_a.discard(h)
                a.tcp_close(h)
        elif kind is Accepted:
            while (child := a.tcp_accept(h)) is not None:
                remote = str(a.socket_info(child)["remote"])
                if check is not None and remote == self.expect_accept:
                    check.a_handle = child
                    check.a_connected = True
                    check.a_port = LISTEN_PORT
                elif self.attacker is None and remote == f"{ATTACKER_STR}:{self.attacker_port}":
                    self.attacker = child
                    self.attackers += 1
                elif self.rng.random() < 0.4:
                    a.tcp_close(child)
                else:
                    self.strays.append(child)
                    if len(self.strays) > 16:
                        a.tcp_close(self.strays.popleft())
        elif h == self.attacker:
            if kind is Readable:
                a.tcp_recv(h)
            elif kind is PeerClosed or isinstance(ev, TERMINAL_EVENTS):
                a.tcp_close(h)
                self.attacker = None
                self.attacker_at = self.net.now + 1.0
        elif h == self.probe:
            if kind is Connected:  # the fuzz completed the handshake for the silent host
                a.tcp_send(h, b"hello")
                self._close_probe(2.0)
            elif kind is Readable:
                a.tcp_recv(h)
            elif kind is PeerClosed or isinstance(ev, TERMINAL_EVENTS):
                self._close_probe(self.rng.uniform(0.5, 5.0))
        elif h in self.strays:
            if kind is Readable:
                a.tcp_recv(h)
            elif kind is PeerClosed or isinstance(ev, TERMINAL_EVENTS):
                self.strays.remove(h)
                a.tcp_close(h)
        elif kind is UdpReadable:
            # Not always drained, so the queue fills up; not at all during the final checks.
            if self.writing and self.rng.random() < 0.8:
                while a.udp_recvfrom(h) is not None:
                    pass
        elif kind is EchoReplyReadable:
            while a.icmp_recv(h) is not None:
                pass
        elif kind is UdpUnreachable:
            self.udp_unreachable += 1

    def _a_read(self, pair: _Pair) -> None:
        assert pair.a_handle is not None
        data = self.a.tcp_recv(pair.a_handle)
        if data:
            pair.ba.take(data, self.net.now, self.steps)
            if pair.ba.mismatch is not None:
                self._a_mismatch(pair)
            else:
                self.verified_ba += len(data)

    def _b_read(self, pair: _Pair) -> None:
        assert pair.b_handle is not None
        data = self.b.tcp_recv(pair.b_handle)
        if data:
            pair.ab.take(data, self.net.now, self.steps)
            if pair.ab.mismatch is not None:
                self._fail("corruption", f"B received bytes A never wrote: {pair.ab.mismatch}")
            else:
                self.verified_ab += len(data)

    def _a_mismatch(self, pair: _Pair) -> None:
        """A got bytes B never wrote: an injection if a fuzz frame changed what A received."""
        if pair.broken is not None:
            return
        if pair.injected:
            self.injections += 1
            self._broken(pair, "injected")
        else:
            self._fail("corruption", f"A received bytes B never wrote: {pair.ba.mismatch}")

    def _on_b(self, host: Host, ev: StackEvent) -> None:
        b = self.b
        h = ev.handle
        kind = type(ev)
        if kind is Accepted:
            while (child := b.tcp_accept(h)) is not None:
                port = _port_of(str(b.socket_info(child)["remote"]))
                live = self.live
                if live is not None and port == live.a_port and live.b_handle is None:
                    live.b_handle = child
                else:
                    b.tcp_close(child)  # an older live connection's late handshake
            return
        if h in self.retired_b:
            if kind is Readable:
                b.tcp_recv(h)
            elif kind is PeerClosed or isinstance(ev, TERMINAL_EVENTS):
                self.retired_b.discard(h)
                b.tcp_close(h)
            return
        for pair in (self.live, self.check):
            if pair is None or h != pair.b_handle:
                continue
            if kind is Connected:
                pass
            elif kind is Readable:
                if self.net.now >= pair.b_paused_until:
                    self._b_read(pair)
            elif kind is PeerClosed:
                self._broken(pair, "peer-closed-b")
            elif isinstance(ev, TERMINAL_EVENTS):
                self._broken(pair, kind.__name__.lower() + "-b")
            return
        if kind is Readable:
            b.tcp_recv(h)
        # B's UDP and ping sockets exist only for the final checks, which read them.

    def _write(self, stack: NetStack, handle: int, stream: _Stream, n: int) -> None:
        data = stream.expected(stream.written, n)
        with contextlib.suppress(OSError):  # the connection ended: its terminal event says why
            stream.written += stack.tcp_send(handle, data, self.net.now)

    def _app_writes(self) -> None:
        r = self.rng
        live = self.live
        if live is None or not live.up or live.a_handle is None or live.b_handle is None:
            return
        for stack, handle, stream in (
            (self.a, live.a_handle, live.ab),
            (self.b, live.b_handle, live.ba),
        ):
            if r.random() < 0.5 and stream.outstanding < MAX_IN_FLIGHT:
                self._write(stack, handle, stream, r.randint(1, 3000))

    def _open_probe(self) -> None:
        self.probe = self.a.tcp_connect(SILENT_IP, PROBE_PORT, self.net.now)
        self.probe_port = _port_of(str(self.a.socket_info(self.probe)["local"]))

    def _close_probe(self, reopen_in: float) -> None:
        assert self.probe is not None
        self.a.tcp_close(self.probe)
        self.probe = None
        self.probe_port = 0
        self.probe_at = self.net.now + reopen_in

    def _announce_b(self) -> None:
        """B's ARP reply to A, as its answer to A's periodic refresh would be.

        Why: a fuzz ARP packet may legitimately poison A's entry for B (ARP has no
        authentication) and the stack would heal only when the entry expires a minute later;
        with steps of a millisecond that would leave the live connection dead for most of a
        run. Not counted as a fuzz frame.
        """
        buf = bytearray(ETH_LEN + 28)
        EthernetRepr(MAC_B, MAC_A, ETHERTYPE_ARP).emit(buf, 0)
        ArpRepr(OP_REPLY, MAC_B, B_IP, MAC_A, A_IP).emit(buf, ETH_LEN)
        self.net.inject(self.net.a, buf)
        self.next_announce = self.net.now + ANNOUNCE_INTERVAL

    def _apps(self) -> None:
        """What the applications do between fuzz frames."""
        r = self.rng
        a = self.a
        now = self.net.now
        live = self.live
        if live is not None and live.broken is not None:
            self._drop_live(live.broken)
        elif live is not None and live.up and now >= live.retire_at:
            self._retire_live()
        elif live is not None and live.up:
            if r.random() < 0.0005:
                live.a_paused_until = now + r.uniform(0.05, 1.5)
            if r.random() < 0.0005:
                live.b_paused_until = now + r.uniform(0.05, 1.5)
            if live.a_paused_until and now >= live.a_paused_until:
                live.a_paused_until = 0.0
                self._a_read(live)
            if live.b_paused_until and now >= live.b_paused_until:
                live.b_paused_until = 0.0
                self._b_read(live)
            self._app_writes()
        self._attack()
        if self.probe is None and now >= self.probe_at:
            self._open_probe()
        if now >= self.next_ping:
            self.ping_seq += 1
            a.icmp_echo(self.a_ping, IP_B, self.ping_seq, b"stackbed-ping", now)
            self.next_ping = now + 1.0
        if r.random() < 0.01:
            a.udp_sendto(self.a_udp, r.randbytes(r.randint(0, 2000)), IP_B, 9, now)
        if now >= self.next_announce:
            self._announce_b()
        self.net.flush()

    # ------------------------------------------------------------------ the fuzz loop

    def _advance_time(self) -> None:
        r = self.rng
        c = r.random()
        if c < 0.0004:
            dt = r.uniform(29.0, 66.0)  # reassembly expiry, TIME-WAIT, ARP and FIN timeouts
        elif c < 0.004:
            dt = r.uniform(0.05, 3.0)  # RTO, delayed ACK, persist, ARP retries
        else:
            dt = r.expovariate(1000.0)
        net = self.net
        net.run(until=net.now + dt, max_steps=net.stats.steps + 50_000)

    def _feed(self, frame: bytes, case: Case) -> None:
        live = self.live
        sock = self.live_socket()
        before = None
        if sock is not None:
            conn = sock.conn
            stats = conn.stats
            before = (stats.segments_in, conn.state, conn.rcv_nxt, stats.out_of_order_in)
        self.a.receive_frame(frame, self.net.now, case.checksum_ok)
        if sock is not None and live is not None and before is not None:
            # Touched: a segment reached the connection, or (an ICMP error) changed its state.
            conn = sock.conn
            stats = conn.stats
            after = (stats.segments_in, conn.state, conn.rcv_nxt, stats.out_of_order_in)
            if after[:2] != before[:2]:
                live.touched = True
            if after[2:] != before[2:]:
                live.injected = True

    def step(self, stop_at: int | None = None) -> None:
        """One fuzz case, then the applications, then time."""
        case = self.factory.case()
        self.steps += 1
        n = len(case.frames)
        self.mutator_frames[case.mutator] += n
        self.mutator_cases[case.mutator] += 1
        self.kinds[case.kind] += n
        self.checksum_ok["true" if case.checksum_ok else "false"] += n
        self.stage = "receive"
        t0 = time.process_time()  # CPU time: a busy machine does not make a frame "slow"
        fed = 0
        for frame in case.frames:
            if stop_at is not None and self.index >= stop_at:
                break
            self.index += 1
            fed += 1
            self.current = (self.index, case, frame)
            self._feed(frame, case)
        self.stage = "poll"
        self.net.flush()
        self._account(case, fed, time.process_time() - t0)
        self.stage = "apps"
        self._apps()
        self.stage = "time"
        self._advance_time()
        self.stage = "checks"
        self._watch_live()
        if self.steps % INVARIANT_EVERY == 0:
            self._check_invariants()
            self._trim_logs()
        if self.steps % COLLECT_EVERY == 0:
            gc.collect()

    def _account(self, case: Case, fed: int, spent: float) -> None:
        """CPU the stacks spent on a case (its frames in, then the poll that answers them: a
        cost can hide in either), per frame, by mutator; the slowest cases are kept."""
        if not fed:
            return
        mutator = case.mutator
        self.cpu[mutator] += spent
        per_frame = spent / fed
        if per_frame > self.cpu_max.get(mutator, 0.0):
            self.cpu_max[mutator] = per_frame
        slowest = self.slowest
        if len(slowest) < 5 or per_frame > slowest[-1][0]:
            slowest.append((per_frame, self.index, mutator, case.kind))
            slowest.sort(reverse=True)
            del slowest[5:]
        if per_frame > SLOW_FRAME_SECONDS:
            self._fail("slow", f"{per_frame:.2f} s of CPU per frame (frames in, then poll)")

    def _watch_live(self) -> None:
        live = self.live
        if live is None or not live.up:
            return
        now = self.net.now
        for stream, name in ((live.ab, "stalled-a-to-b"), (live.ba, "stalled-b-to-a")):
            if (
                stream.outstanding > 0
                and now - stream.progress_at > STALL_SECONDS
                and self.steps - stream.progress_step > STALL_STEPS
            ):
                self._broken(live, name)
                return

    def _trim_logs(self) -> None:
        """`stack_sim.Host` logs every event; a long run must not keep them all."""
        self.net.a.log.clear()
        self.net.b.log.clear()

    def _check_invariants(self) -> None:
        problems = []
        for name, stack in (("A", self.a), ("B", self.b)):
            for key, sock in stack.tcp.conns.items():
                conn = sock.conn
                where = f"{name} tcp {key} {conn.state}"
                if sock.key != key or not sock.in_table:
                    problems.append(f"{where}: table entry does not match its socket")
                if not conn.snd_una <= conn.snd_nxt <= conn.snd_max:
                    problems.append(
                        f"{where}: SND.UNA {conn.snd_una} SND.NXT {conn.snd_nxt} "
                        f"SND.MAX {conn.snd_max} out of order"
                    )
                if conn.state is TcpState.CLOSED:
                    problems.append(f"{where}: a closed connection stayed in the table")
                if conn.send_queued > conn.config.send_buffer_size:
                    problems.append(f"{where}: {conn.send_queued} bytes queued to send")
                if conn.recv_available > conn.config.recv_buffer_size + 65536:
                    problems.append(f"{where}: {conn.recv_available} bytes ready to read")
            rs = stack.reassembler
            if not 0 <= rs.buffered_bytes <= rs.max_bytes or len(rs) > rs.max_datagrams:
                problems.append(f"{name} reassembly: {len(rs)} datagrams, {rs.buffered_bytes} B")
            for hop, waiting in stack.arp.pending_hops().items():
                if waiting > stack.arp.queue_limit:
                    problems.append(f"{name} arp: {waiting} frames wait for {hop:#x}")
            if len(stack.arp.entries(-math.inf)) > stack.arp.max_entries:
                problems.append(f"{name} arp: cache over its bound")
            for sock in stack.udp.ports.values():
                if sock.queued_bytes > sock.max_bytes or len(sock.queue) > sock.max_datagrams:
                    problems.append(f"{name} udp {sock.port}: queue over its bound")
            if stack.counters.drops.get("internal-error"):
                problems.append(f"{name}: internal-error counted")
        if problems:
            self._fail("invariant", "; ".join(problems[:5]))

    def _fail(self, what: str, detail: str) -> None:
        if self.failure is not None:
            return
        index, case, frame = self.current if self.current is not None else (self.index, None, None)
        self.failure = Failure(
            what,
            self.stage,
            index,
            case.mutator if case is not None else None,
            case.kind if case is not None else None,
            case.checksum_ok if case is not None else None,
            frame,
            detail,
        )

    def run(
        self,
        *,
        frames: int | None = None,
        seconds: float | None = None,
        stop_at: int | None = None,
        progress: TextIO | None = None,
        progress_every: float = 5.0,
    ) -> None:
        """Fuzz until `frames` frames were fed, `seconds` passed, frame `stop_at` (a replay:
        the step holding it runs to its end, as in the original run) or a failure."""
        start = time.perf_counter()
        deadline = start + seconds if seconds is not None else math.inf
        next_report = start + progress_every
        collecting = gc.isenabled()
        gc.disable()  # see COLLECT_EVERY
        try:
            while self.failure is None:
                if frames is not None and self.index >= frames:
                    break
                if stop_at is not None and self.index >= stop_at:
                    break
                now = time.perf_counter()
                if now >= deadline:
                    break
                if progress is not None and now >= next_report:
                    next_report = now + progress_every
                    print(self._progress_line(now - start), file=progress, flush=True)
                self.last_beat = time.monotonic()
                self.step(stop_at)
        except KeyboardInterrupt:
            self.interrupted = True
        except (Exception, _Hang):
            self._fail("exception", traceback.format_exc())
        finally:
            if collecting:
                gc.enable()
        self.elapsed = time.perf_counter() - start
        if self.failure is None and not self.interrupted:
            self.stage = "checks"
            try:
                self._check_invariants()
            except Exception:
                self._fail("exception", traceback.format_exc())

    def _progress_line(self, elapsed: float) -> str:
        live = self.live_socket()
        state = str(live.conn.state) if live is not None else "-"
        rate = self.index / elapsed if elapsed > 0 else 0.0
        return (
            f"fuzz seed {self.seed}: {elapsed:6.1f} s  {self.index:>10,} frames  {rate:8,.0f}/s  "
            f"sim {self.net.now:9,.0f} s  live {state}  connections {self.connections}  "
            f"drops {self.a.counters.drops_total:,}"
        )

    # ------------------------------------------------------------------ after the fuzzing

    def _settle(self, seconds: float) -> None:
        net = self.net
        end = net.now + seconds
        while net.now < end:
            if net.now >= self.next_announce:
                self._announce_b()
            self.last_beat = time.monotonic()
            net.run(until=min(end, net.now + ANNOUNCE_INTERVAL), max_steps=net.stats.steps + 50_000)

    def _transfer(self, pair: _Pair, size: int, limit: float = 120.0) -> str | None:
        """A fresh random chunk each way over `pair`, byte-exact; None when it worked."""
        assert pair.a_handle is not None and pair.b_handle is not None
        pair.ab.start_chunk(self.rng.randbytes(size))
        pair.ba.start_chunk(self.rng.randbytes(size))
        net = self.net
        end = net.now + limit
        while net.now < end:
            for stack, handle, stream in (
                (self.a, pair.a_handle, pair.ab),
                (self.b, pair.b_handle, pair.ba),
            ):
                assert stream.chunk is not None
                left = stream.chunk_at + len(stream.chunk) - stream.written
                if left > 0:
                    self._write(stack, handle, stream, min(left, 65536))
            if net.now >= self.next_announce:
                self._announce_b()
            self.last_beat = time.monotonic()
            net.run(until=net.now + 0.01, max_steps=net.stats.steps + 50_000)
            for stream in (pair.ab, pair.ba):
                if stream.mismatch is not None:
                    return f"not byte-exact: {stream.mismatch}"
            if pair.broken is not None:
                return f"connection broke: {pair.broken}"
            if pair.ab.chunk_done and pair.ba.chunk_done:
                return None
        return f"incomplete after {limit:.0f} s: {pair.ab.received}/{pair.ba.received}"

    def verify(self) -> dict[str, object]:
        """Does the stack still work? The live connection must carry a fresh chunk both ways;
        if the fuzz legitimately broke it, a new connection through the attacked listener
        must; UDP and ping must be answered."""
        self.stage = "verify"
        self.current = None
        self.writing = False
        for link in self.net.links.values():
            link.config = CLEAN_LINK  # the checks judge the stack, not the link
        result: dict[str, object] = {}
        try:
            live = self.live
            assert live is not None
            if live.up:  # a paused reader resumes
                live.a_paused_until = live.b_paused_until = 0.0
                self._a_read(live)
                self._b_read(live)
            self._settle(QUIESCE_SECONDS)
            if live.broken is not None:
                reason = f"broken by the fuzz: {live.broken}"
            elif not live.up:
                reason = "not re-established yet"
            elif live.ab.outstanding or live.ba.outstanding:
                reason = "out of sync after the quiet period"
            else:
                reason = None
            if reason is not None and not live.touched:
                self._fail("post-fuzz", f"live connection unusable ({reason}), never fuzzed")
            if reason is None:
                problem = self._transfer(live, CHECK_BYTES)
                if problem is None:
                    result["live"] = "ok"
                elif live.injected:
                    result["live"] = f"desynchronized by injected data ({problem})"
                else:
                    result["live"] = f"FAILED: {problem}"
                    self._fail("post-fuzz", f"live connection: {problem}")
            else:
                result["live"] = reason
            # Always: a new connection through the attacked listener, both ways.
            check = self.check = self._new_pair(None)
            b_handle = self.b.tcp_connect(IP_A, LISTEN_PORT, self.net.now)
            check.b_handle = b_handle
            self.expect_accept = str(self.b.socket_info(b_handle)["local"])
            self._settle(1.0)
            if check.a_handle is None:
                problem = "the listener did not accept"
            else:
                problem = self._transfer(check, CHECK_BYTES)
            result["listener"] = "ok" if problem is None else f"FAILED: {problem}"
            if problem is not None:
                self._fail("post-fuzz", f"new connection through the listener: {problem}")
            result["udp"] = self._check_udp()
            result["ping"] = self._check_ping()
            for what in ("udp", "ping"):
                if result[what] != "ok":
                    self._fail("post-fuzz", f"{what}: {result[what]}")
        except (Exception, _Hang):
            self._fail("exception", traceback.format_exc())
        result["ok"] = self.failure is None
        return result

    def _check_udp(self) -> str:
        b, a = self.b, self.a
        while a.udp_recvfrom(self.a_udp) is not None:
            pass
        handle = b.udp_bind(0)
        payload = self.rng.randbytes(3000)  # fragmented on the way: reassembly must work
        b.udp_sendto(handle, payload, IP_A, UDP_PORT, self.net.now)
        self._settle(0.5)
        got = a.udp_recvfrom(self.a_udp)
        if got is None:
            return "no datagram arrived"
        return "ok" if got[0] == payload else "datagram differs"

    def _check_ping(self) -> str:
        b = self.b
        handle = b.icmp_bind(7777)
        data = self.rng.randbytes(56)
        b.icmp_echo(handle, IP_A, 1, data, self.net.now)
        self._settle(0.5)
        got = b.icmp_recv(handle)
        if got is None:
            return "no echo reply"
        return "ok" if got[0] == data else "echo reply differs"

    # ------------------------------------------------------------------ report

    def report(self, post: dict[str, object] | None, replay: int | None) -> dict[str, object]:
        a = self.a
        drops = a.counters.drops
        top = sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
        live = self.live
        sock = self.live_socket()
        live_info: dict[str, object] = {"connections": self.connections}
        if sock is not None:
            stats = sock.conn.stats
            live_info.update(
                state=str(sock.conn.state),
                established=sock.conn.state is TcpState.ESTABLISHED,
                bytes_in=stats.bytes_in,
                bytes_out=stats.bytes_out,
                retransmits=stats.retransmits_timeout + stats.retransmits_fast,
                unacceptable_in=stats.unacceptable_in,
                challenge_acks=stats.challenge_acks,
            )
        else:
            live_info.update(state=None, established=False)
        if live is not None:
            live_info["stream_a_to_b"] = live.ab.received
            live_info["stream_b_to_a"] = live.ba.received
        live_info["reconnects"] = dict(self.reconnects)
        live_info["rotations"] = dict(self.rotations)
        live_info["injections_detected"] = self.injections
        live_info["verified_bytes_a_to_b"] = self.verified_ab
        live_info["verified_bytes_b_to_a"] = self.verified_ba
        attacker = self.attacker_socket()
        live_info["attacker_connections"] = self.attackers
        if attacker is not None:
            live_info["attacker_state"] = str(attacker.conn.state)
        internal = sum(s.counters.drops.get("internal-error", 0) for s in (self.a, self.b))
        rs = a.reassembler.stats
        out: dict[str, object] = {
            "bench": "core-fuzz",
            "seed": self.seed,
            "ok": self.failure is None and (post is None or bool(post.get("ok"))),
            "frames": self.index,
            "cases": self.steps,
            "elapsed_s": round(self.elapsed, 3),
            "frames_per_s": round(self.index / self.elapsed, 1) if self.elapsed > 0 else 0.0,
            "sim_time_s": round(self.net.now, 3),
            "variant": self.variant,
            "cpu_us_per_frame": {
                m: round(self.cpu[m] / n * 1e6, 1) for m, n in self.mutator_frames.items() if n
            },
            "cpu_max_ms": {m: round(t * 1e3, 3) for m, t in self.cpu_max.items()},
            "slowest_cases": [
                {"index": i, "mutator": m, "kind": k, "cpu_ms_per_frame": round(t * 1e3, 3)}
                for t, i, m, k in self.slowest
            ],
            "mutators": dict(self.mutator_frames),
            "mutator_cases": dict(self.mutator_cases),
            "kinds": dict(self.kinds.most_common()),
            "checksum_ok": dict(self.checksum_ok),
            "drops_total": a.counters.drops_total,
            "drop_reasons": len(drops),
            "drops_top": dict(top),
            "internal_errors": internal,
            "live": live_info,
            "stack": {
                "frames_in": a.counters.frames_in,
                "frames_out": a.counters.frames_out,
                "tcp_resets_out": a.counters.tcp_resets_out,
                "tcp_listen_drops": a.counters.tcp_listen_drops,
                "tcp_connections_accepted": a.counters.tcp_connections_accepted,
                "tcp_connections_now": len(a.tcp.conns),
                "icmp_echo_replies_out": a.counters.icmp_echo_replies_out,
                "icmp_unreachable_out": a.counters.icmp_unreachable_out,
                "icmp_rate_limited": a.counters.icmp_rate_limited,
                "udp_in": a.counters.udp_in,
                "udp_unreachable_events": self.udp_unreachable,
                "arp_learned": a.counters.arp_learned,
                "ip_reassembled": a.counters.ip_reassembled,
                **{f"frag_{f.name}": getattr(rs, f.name) for f in fields(rs)},
            },
            "events_a": dict(self.events_a.most_common()),
            "post_fuzz": post,
            "failure": self.failure.as_dict(self.seed) if self.failure is not None else None,
        }
        if replay is not None:
            out["replay"] = replay
        if self.interrupted:
            out["interrupted"] = True
        return out


def _port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


@contextlib.contextmanager
def _watchdog(seconds: float | None, bench: FuzzBench) -> Iterator[None]:
    """Turn a step that runs for `seconds` of wall time (an endless loop in the stack) into a
    failure with the frame that caused it, instead of a run that never ends."""
    if (
        not seconds
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "setitimer")
    ):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        if time.monotonic() - bench.last_beat > seconds:
            raise _Hang(f"one step ran for more than {seconds:.0f} s (stage {bench.stage})")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_fuzz(
    seed: int,
    *,
    frames: int | None = None,
    seconds: float | None = None,
    replay: int | None = None,
    verify: bool = True,
    progress: TextIO | None = None,
    progress_every: float = 5.0,
    hang_seconds: float | None = None,
    frame_hex: str | None = None,
    checksum_ok: bool = False,
) -> dict[str, object]:
    """Build the testbed, fuzz, check the stack still works; returns the report.

    `replay`: run the same deterministic sequence up to that frame index (and to the end of its
    step) only. `frame_hex`: feed that one frame to the freshly built testbed instead.
    """
    bench = FuzzBench(seed)
    with _watchdog(hang_seconds, bench):
        try:
            bench._setup()
        except (Exception, _Hang):
            bench._fail("exception", traceback.format_exc())
        initial = bench.initial_state()
        if bench.failure is not None:
            pass
        elif frame_hex is not None:
            frame = bytes.fromhex(frame_hex)
            case = Case("hex", "hex", [frame], checksum_ok)
            bench.index = 1
            bench.current = (1, case, frame)
            bench.stage = "receive"
            try:
                bench._feed(frame, case)
                bench.stage = "poll"
                bench.net.flush()
                bench._advance_time()
            except (Exception, _Hang):
                bench._fail("exception", traceback.format_exc())
        else:
            bench.run(
                frames=frames,
                seconds=seconds if frames is None else None,
                stop_at=replay,
                progress=progress,
                progress_every=progress_every,
            )
        post = None
        if verify and bench.failure is None and replay is None and frame_hex is None:
            post = bench.verify()
    report = bench.report(post, replay)
    report["initial_state"] = initial
    return report

"""Shared helpers for the TCP state-machine tests (no tests of its own).

Scripted tests talk to one `TcpConnection` with hand-written segments built by `seg()`; pair
tests wire two connections together by hand with `Pair`, so each test decides exactly which
segment gets through and when.
"""

from __future__ import annotations

from guest.stack.tcp import TcpConfig, TcpConnection
from guest.stack.tcp.events import TcpEvent
from guest.stack.wire.tcp import TcpFlags, TcpRepr

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 80)
CLIENT_ISN = 1000
SERVER_ISN = 5000

_FLAG_LETTERS = {
    "S": TcpFlags.SYN,
    "A": TcpFlags.ACK,
    "F": TcpFlags.FIN,
    "R": TcpFlags.RST,
    "P": TcpFlags.PSH,
}

#: Plain config: no options, no delayed ACK, so scripted sequence numbers stay simple.
PLAIN = TcpConfig(timestamps=False, sack=False, window_scaling=False, delayed_ack=False, mss=1000)


def flags_of(text: str) -> TcpFlags:
    """'SA' -> SYN|ACK."""
    f = TcpFlags(0)
    for ch in text:
        f |= _FLAG_LETTERS[ch]
    return f


def letters(seg: TcpRepr) -> str:
    """SYN|ACK -> 'SA' (in the order S, A, F, R, P)."""
    return "".join(k for k, v in _FLAG_LETTERS.items() if seg.flags & v)


def seg(
    seq: int,
    ack: int = 0,
    flags: str = "A",
    *,
    window: int = 65535,
    payload: bytes = b"",
    src: int = SERVER[1],
    dst: int = CLIENT[1],
    **options: object,
) -> TcpRepr:
    """A segment from the scripted peer (by default the server talking to the client)."""
    return TcpRepr(
        src_port=src,
        dst_port=dst,
        seq=seq & 0xFFFFFFFF,
        ack=ack & 0xFFFFFFFF,
        flags=flags_of(flags),
        window=window,
        payload=payload,
        **options,  # type: ignore[arg-type]
    )


def to_server(seq: int, ack: int = 0, flags: str = "A", **kw: object) -> TcpRepr:
    """A segment from the scripted client to a server-side connection."""
    return seg(seq, ack, flags, src=CLIENT[1], dst=SERVER[1], **kw)  # type: ignore[arg-type]


def client(config: TcpConfig | None = PLAIN, isn: int = CLIENT_ISN) -> TcpConnection:
    """A fresh client connection (CLOSED)."""
    return TcpConnection(CLIENT, SERVER, config, isn=isn)


def open_client(
    config: TcpConfig | None = PLAIN,
    *,
    window: int = 65535,
    now: float = 0.0,
    **syn_ack_opts: object,
) -> TcpConnection:
    """A client brought to ESTABLISHED by a scripted SYN-ACK (its SYN/ACK outputs drained)."""
    syn_ack_opts.setdefault("mss", 1000)
    c = client(config)
    c.connect()
    c.poll(now)
    c.receive_segment(seg(SERVER_ISN, CLIENT_ISN + 1, "SA", window=window, **syn_ack_opts), now)
    c.poll(now)
    c.events()
    return c


def open_server(
    config: TcpConfig | None = PLAIN, *, window: int = 65535, now: float = 0.0, **syn_opts: object
) -> TcpConnection:
    """A server connection brought to ESTABLISHED by a scripted SYN and ACK."""
    syn_opts.setdefault("mss", 1000)
    s = TcpConnection.accept_syn(
        to_server(CLIENT_ISN, 0, "S", window=window, **syn_opts),
        local=SERVER,
        remote=CLIENT,
        config=config,
        isn=SERVER_ISN,
        now=now,
    )
    syn_ack = s.poll(now)[0]
    ts = syn_opts.get("timestamp")
    extra = {}
    if ts and syn_ack.timestamp:
        extra = {"timestamp": (ts[0], syn_ack.timestamp[0])}  # type: ignore[index]
    s.receive_segment(to_server(CLIENT_ISN + 1, SERVER_ISN + 1, "A", window=window, **extra), now)
    s.poll(now)
    s.events()
    return s


class Pair:
    """Two connections joined by a lossless, instantaneous wire that the test drives."""

    def __init__(
        self,
        config_a: TcpConfig | None = PLAIN,
        config_b: TcpConfig | None = None,
        *,
        isn_a: int = CLIENT_ISN,
        isn_b: int = SERVER_ISN,
    ) -> None:
        self.a = TcpConnection(CLIENT, SERVER, config_a, isn=isn_a)
        self.b = TcpConnection(SERVER, CLIENT, config_b or config_a, isn=isn_b)
        self.now = 0.0
        self.log: list[tuple[str, TcpRepr]] = []

    def flush(self, *, rounds: int = 1000) -> None:
        """Poll both sides and deliver everything until neither has anything to say."""
        for _ in range(rounds):
            moved = False
            for src, dst, name in ((self.a, self.b, "a>b"), (self.b, self.a, "b>a")):
                for s in src.poll(self.now):
                    moved = True
                    self.log.append((name, s))
                    dst.receive_segment(s, self.now)
            if not moved:
                return
        raise AssertionError("the pair never went quiet")

    def advance(self, dt: float) -> None:
        """Move the clock and flush (timers that expire meanwhile fire at the new time)."""
        self.now += dt
        self.flush()

    def handshake(self) -> None:
        """Active open a -> b where b was opened passively from a's SYN."""
        self.a.connect()
        syn = self.a.poll(self.now)[0]
        self.log.append(("a>b", syn))
        self.b = TcpConnection.accept_syn(
            syn,
            local=SERVER,
            remote=CLIENT,
            config=self.b.config,
            isn=self.b.iss,
            now=self.now,
        )
        self.flush()

    def events(self) -> tuple[list[TcpEvent], list[TcpEvent]]:
        """Drain both event queues."""
        return self.a.events(), self.b.events()

"""Hunt for TCP stalls in the simulator: many seeded lossy transfers, longest no-progress gap.

Each run opens one connection in `tcp_sim`, streams data one way (or both), with the same
impairments on both directions, and measures per sender the longest stretch of simulated time
in which SND.UNA did not advance although data was queued or in flight. With a millisecond
RTT and a 200 ms minimum RTO, a gap of seconds needs several consecutive losses of the same
segment; a gap far beyond that points at a state machine bug (no timer armed, a resend that
never leaves, a recovery that never ends, an inflated RTO).

    python3 -m guest.bench.stall_hunt --seeds 200 --size 1500000 --loss 0.02 --both
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass, field

from guest.stack.tcp.config import TcpConfig
from guest.stack.tcp.connection import TcpConnection
from guest.testing.impairment import LinkConfig
from guest.testing.tcp_sim import Simulator, StreamApp


@dataclass
class Progress:
    """SND.UNA watch over one connection."""

    una: int | None = None
    since: float = 0.0
    busy: bool = False
    worst: float = 0.0
    worst_at: float = 0.0
    trace: list[tuple[float, int, int, float]] = field(default_factory=list)

    def observe(self, conn: TcpConnection, now: float) -> None:
        una = conn.snd_una
        busy = conn.send_queued > 0 or conn.snd_max > una
        if una != self.una or (busy and not self.busy):
            self.una = una
            self.since = now
        self.busy = busy
        if busy and now - self.since > self.worst:
            self.worst = now - self.since
            self.worst_at = self.since


@dataclass
class RunResult:
    seed: int
    worst: float
    worst_at: float
    side: str
    ok: bool
    sim_time: float
    detail: str


def run_one(
    seed: int,
    size: int,
    both: bool,
    link: LinkConfig,
    cfg: TcpConfig,
    server_cfg: TcpConfig,
    write: int | None,
    time_limit: float,
) -> RunResult:
    rng = random.Random(seed * 7919 + 1)
    up = rng.randbytes(size)
    down = rng.randbytes(size // 2) if both else b""
    wrng = random.Random(seed)

    def wsize() -> int:
        return write if write else wrng.choice((1, 100, 1000, 1448, 4096, 16384, 65536, 200000))

    sim = Simulator(link, link, seed=seed)
    client = sim.add_host("c")
    server = sim.add_host("s")
    sapps: list[StreamApp] = []

    def factory() -> StreamApp:
        app = StreamApp(down, write_size=wsize)
        sapps.append(app)
        return app

    server.listen(80, factory, server_cfg)
    capp = StreamApp(up, write_size=wsize)
    conn = client.connect(40000, ("s", 80), capp, cfg, ts_offset=rng.getrandbits(32))
    cp, sp = Progress(), Progress()
    sconn: list[TcpConnection] = []

    def stop() -> bool:
        now = sim.now
        cp.observe(conn, now)
        if not sconn and server.connections:
            sconn.append(next(iter(server.connections.values())))
        if sconn:
            sp.observe(sconn[0], now)
        # Done once both sides got everything (do not wait out TIME-WAIT).
        return bool(sapps) and len(sapps[0].received) == len(up) and capp.eof and sapps[0].eof

    done = sim.run(until=time_limit, stop=stop)
    ok = done and bytes(sapps[0].received) == up and bytes(capp.received) == down
    side, worst, at = ("client", cp.worst, cp.worst_at)
    if sp.worst > worst:
        side, worst, at = ("server", sp.worst, sp.worst_at)
    s = conn.stats
    detail = (
        f"to={s.timeouts} rtx_f={s.retransmits_fast} rtx_t={s.retransmits_timeout} "
        f"fr={s.fast_recoveries} srtt={s.srtt} rto={s.rto:.3f} state={conn.state.name}"
    )
    return RunResult(seed, worst, at, side, ok, sim.now, detail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--size", type=int, default=1_500_000)
    p.add_argument("--both", action="store_true", help="send data in both directions")
    p.add_argument("--delay", type=float, default=0.001)
    p.add_argument("--loss", type=float, default=0.02)
    p.add_argument("--duplicate", type=float, default=0.01)
    p.add_argument("--corrupt", type=float, default=0.005)
    p.add_argument("--reorder", type=float, default=0.10)
    p.add_argument("--reorder-delay", type=float, default=0.001)
    p.add_argument("--no-ts", action="store_true", help="disable timestamps")
    p.add_argument("--no-sack", action="store_true", help="disable SACK")
    p.add_argument("--no-sack-recovery", action="store_true", help="NewReno recovery with SACK")
    p.add_argument("--no-delack", action="store_true", help="receiver acknowledges every segment")
    p.add_argument("--write", type=int, default=0, help="fixed write size (0: random mix)")
    p.add_argument("--time-limit", type=float, default=600.0)
    p.add_argument("--threshold", type=float, default=5.0, help="report gaps above (s)")
    a = p.parse_args(argv)
    link = LinkConfig(
        delay=a.delay,
        loss=a.loss,
        duplicate=a.duplicate,
        corrupt=a.corrupt,
        reorder=a.reorder,
        reorder_delay=a.reorder_delay,
    )
    cfg = TcpConfig(
        timestamps=not a.no_ts,
        sack=not a.no_sack,
        sack_recovery=not a.no_sack_recovery,
        delayed_ack=not a.no_delack,
    )
    results: list[RunResult] = []
    t0 = time.perf_counter()
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        r = run_one(seed, a.size, a.both, link, cfg, cfg, a.write or None, a.time_limit)
        results.append(r)
        if r.worst > a.threshold or not r.ok:
            print(
                f"seed {r.seed}: gap {r.worst:.3f}s at {r.worst_at:.3f} ({r.side}) ok={r.ok} "
                f"t={r.sim_time:.1f} {r.detail}",
                flush=True,
            )
    gaps = sorted(r.worst for r in results)
    n = len(gaps)
    p99 = gaps[min(n - 1, math.ceil(0.99 * n) - 1)]
    p50 = gaps[n // 2]
    bad = sum(not r.ok for r in results)
    print(
        f"{n} runs in {time.perf_counter() - t0:.0f}s: gap max {gaps[-1]:.3f}s p99 {p99:.3f}s "
        f"p50 {p50:.3f}s; failed/corrupt {bad}"
    )
    for r in sorted(results, key=lambda r: -r.worst)[:5]:
        print(f"  seed {r.seed}: {r.worst:.3f}s ({r.side}) at {r.worst_at:.3f} {r.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Whole transfers over the simulated lossy link: integrity, counters, throughput figure."""

from __future__ import annotations

import random

import pytest

from guest.stack.tcp import TcpClosed, TcpConfig
from guest.testing.tcp_sim import LinkConfig, StreamApp, run_transfer

MB = 1_000_000


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def lossy(loss: float, **kw: object) -> LinkConfig:
    return LinkConfig(
        delay=0.010,
        bandwidth=100e6,
        loss=loss,
        reorder=0.02 if loss else 0.0,
        duplicate=0.01 if loss else 0.0,
        corrupt=loss / 5,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.20])
def test_bidirectional_transfer_is_byte_identical(loss: float) -> None:
    up = payload(2 * MB, 1)
    down = payload(1 * MB, 2)
    r = run_transfer(up, down, forward=lossy(loss), backward=lossy(loss), seed=7)
    assert r.completed
    assert r.server_received == up
    assert r.client_received == down
    assert isinstance(r.client_events[-1], TcpClosed) and isinstance(r.server_events[-1], TcpClosed)
    cs, ss = r.client_stats, r.server_stats
    retransmits = (
        cs.retransmits_fast + cs.retransmits_timeout + ss.retransmits_fast + ss.retransmits_timeout
    )
    if loss == 0.0:
        assert retransmits == 0
        assert cs.timeouts == ss.timeouts == 0
        assert cs.dup_acks_in == ss.dup_acks_in == 0
        assert cs.bytes_out == len(up) and ss.bytes_out == len(down)
    else:
        assert retransmits > 0
        assert r.forward.lost > 0
    assert cs.bytes_in == len(down) and ss.bytes_in == len(up)


def test_isolated_losses_are_repaired_by_fast_retransmit() -> None:
    """1 % random loss on a 5 MB one-way transfer, ACK path clean, no reordering."""
    data = payload(5 * MB, 3)
    fwd = LinkConfig(delay=0.010, bandwidth=100e6, loss=0.01)
    r = run_transfer(data, b"", forward=fwd, backward=LinkConfig(delay=0.010), seed=11)
    assert r.completed and r.server_received == data
    s = r.client_stats
    assert s.fast_recoveries > 0
    assert s.retransmits_fast >= s.fast_recoveries
    assert s.retransmits_fast > s.retransmits_timeout
    lost = r.forward.lost
    assert s.retransmits_fast + s.retransmits_timeout >= lost


def test_drop_tail_bottleneck() -> None:
    """Congestion losses from a small router queue: the transfer adapts and completes."""
    data = payload(2 * MB, 4)
    fwd = LinkConfig(delay=0.020, bandwidth=10e6, queue_bytes=30_000)
    r = run_transfer(data, b"", forward=fwd, backward=LinkConfig(delay=0.020), seed=5)
    assert r.completed and r.server_received == data
    assert r.forward.queue_drops > 0
    assert r.client_stats.fast_recoveries > 0
    # 2 MB over 10 Mbit/s takes 1.6 s at least; it should not take much longer.
    assert r.sim_time - 60.0 < 4.0  # minus TIME-WAIT (2 * MSL)


def test_transfer_without_any_options() -> None:
    cfg = TcpConfig(timestamps=False, sack=False, window_scaling=False, nodelay=False)
    up, down = payload(MB, 5), payload(MB // 2, 6)
    r = run_transfer(
        up,
        down,
        forward=lossy(0.05),
        backward=lossy(0.05),
        client_config=cfg,
        server_config=cfg,
        seed=3,
    )
    assert r.completed and r.server_received == up and r.client_received == down


def test_window_scaling_fills_a_long_fat_pipe() -> None:
    """With a 2 MB buffer and scaling, one RTT carries far more than 64 KiB."""
    data = payload(4 * MB, 8)
    cfg = TcpConfig(recv_buffer_size=2 << 20, send_buffer_size=2 << 20)
    link = LinkConfig(delay=0.050, bandwidth=1e9)
    scaled = run_transfer(
        data, b"", forward=link, backward=link, client_config=cfg, server_config=cfg
    )
    plain_cfg = TcpConfig(recv_buffer_size=2 << 20, send_buffer_size=2 << 20, window_scaling=False)
    plain = run_transfer(
        data, b"", forward=link, backward=link, client_config=plain_cfg, server_config=plain_cfg
    )
    assert scaled.completed and plain.completed
    assert scaled.server_received == data and plain.server_received == data
    assert (scaled.sim_time - 60) * 3 < plain.sim_time - 60


def test_small_writes_and_small_buffers() -> None:
    cfg = TcpConfig(send_buffer_size=3000, recv_buffer_size=5000, mss=536)
    up, down = payload(200_000, 9), payload(150_000, 10)
    rng = random.Random(1)
    r = run_transfer(
        up,
        down,
        forward=lossy(0.02),
        backward=lossy(0.02),
        client_config=cfg,
        server_config=cfg,
        client_write=lambda: rng.randint(1, 700),
        server_write=lambda: rng.randint(1, 50),
        seed=2,
    )
    assert r.completed and r.server_received == up and r.client_received == down


def test_request_response_latency_is_one_rtt_per_exchange() -> None:
    """nodelay (the default) and delayed ACK together: a request and its response cost one RTT
    each, with no Nagle/delayed-ACK stall."""
    from guest.testing.tcp_sim import Simulator

    sim = Simulator(LinkConfig(delay=0.005), seed=1)
    client = sim.add_host("c")
    server = sim.add_host("s")

    class Echo(StreamApp):
        def pump(self, conn):  # type: ignore[no-untyped-def]
            super().pump(conn)
            if self.received and self.terminal is None and not self.closed_called:
                conn.send(bytes(self.received))
                self.received.clear()

    server.listen(7, lambda: Echo(close_when_done=False))
    app = StreamApp(close_when_done=False)
    conn = client.connect(1234, ("s", 7), app)
    sim.run(stop=lambda: conn.state.name == "ESTABLISHED")
    times = []
    for i in range(20):
        start = sim.now
        conn.send(b"x" * (100 + i))
        client.service(conn, sim.now)
        expected = sum(100 + j for j in range(i + 1))
        sim.run(stop=lambda expected=expected: len(app.received) >= expected)
        times.append(sim.now - start)
    assert max(times) == pytest.approx(0.010, abs=1e-6)


def test_throughput_figure(capsys: pytest.CaptureFixture[str]) -> None:
    """Reports how many simulated segments per second the state machine handles."""
    data = payload(4 * MB, 12)
    link = LinkConfig(delay=0.005)
    r = run_transfer(data, data, forward=link, backward=link)
    assert r.completed and r.server_received == data
    rate = r.segments / r.wall_time
    with capsys.disabled():
        print(f"\n[tcp-sim] {r.segments} segments in {r.wall_time:.2f}s: {rate:,.0f} segments/s")
    assert rate > 1000  # generous floor; a regression to quadratic behaviour would fail it


def test_connect_to_a_closed_port_is_refused() -> None:
    """The host finds neither connection nor listener and answers the SYN with <RST,ACK>."""
    from guest.stack.tcp import TcpReset
    from guest.testing.tcp_sim import Simulator

    sim = Simulator(LinkConfig(delay=0.001))
    client = sim.add_host("c")
    server = sim.add_host("s")
    app = StreamApp(b"hello")
    client.connect(1234, ("s", 9), app)
    sim.run(stop=lambda: app.done)
    assert app.terminal == TcpReset()
    assert server.resets_sent == 1


def test_passive_side_rejects_strays_after_close() -> None:
    """A segment for a connection the host already forgot draws an RST (RFC 9293 3.10.7.1)."""
    from guest.stack.wire.tcp import TcpFlags, TcpRepr
    from guest.testing.tcp_sim import Simulator

    sim = Simulator(LinkConfig(delay=0.001))
    client = sim.add_host("c")
    server = sim.add_host("s")
    server.listen(80, lambda: StreamApp(b"bye"))
    app = StreamApp(b"hi")
    client.connect(1234, ("s", 80), app)
    sim.run()  # until nothing is left: both ends CLOSED and forgotten
    assert app.done and not server.connections
    stray = TcpRepr(src_port=1234, dst_port=80, seq=1, ack=2, flags=TcpFlags.ACK, window=0)
    before = server.resets_sent
    server.deliver("c", stray, sim.now)
    assert server.resets_sent == before + 1


def test_sequence_and_timestamp_wraparound() -> None:
    """Both sequence spaces and the client's TSval clock wrap past 2**32 mid-transfer."""
    up, down = payload(300_000, 13), payload(300_000, 14)
    r = run_transfer(
        up,
        down,
        forward=lossy(0.02),
        backward=lossy(0.02),
        client_isn=0xFFFFFFFF - 100_000,
        server_isn=0xFFFFFFFF - 1000,
        client_ts_offset=0xFFFFFFFF - 50,  # TSval wraps 51 ms into the connection
        seed=4,
    )
    assert r.completed
    assert r.server_received == up and r.client_received == down
    assert r.server_stats.unacceptable_in < 50  # PAWS did not reject the wrapped clock

"""Property tests: random networks, configurations and write sizes never corrupt the stream;
random segments never crash a connection."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest.stack.tcp import TcpConfig, TcpConnection, TcpState
from guest.stack.wire.tcp import TcpFlags, TcpRepr
from guest.testing.tcp_sim import LinkConfig, run_transfer
from tests.unit.tcp_helpers import PLAIN, Pair

links = st.builds(
    LinkConfig,
    delay=st.sampled_from([0.0, 0.001, 0.02]),
    bandwidth=st.sampled_from([None, 10e6, 1e9]),
    loss=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.2, 0.25]),
    duplicate=st.sampled_from([0.0, 0.02, 0.1]),
    corrupt=st.sampled_from([0.0, 0.02]),
    reorder=st.sampled_from([0.0, 0.05, 0.3]),
    reorder_delay=st.sampled_from([0.001, 0.03]),
)

#: Mostly sizable transfers (many windows' worth), sometimes tiny or empty ones.
sizes = st.one_of(st.sampled_from([0, 1, 1460]), st.integers(20_000, 250_000))

configs = st.builds(
    TcpConfig,
    mss=st.sampled_from([100, 536, 1460]),
    send_buffer_size=st.sampled_from([2000, 16384, 200_000]),
    recv_buffer_size=st.sampled_from([1500, 16384, 200_000]),
    window_scaling=st.booleans(),
    timestamps=st.booleans(),
    sack=st.booleans(),
    nodelay=st.booleans(),
    delayed_ack=st.booleans(),
    initial_window=st.sampled_from([1, 4, 10]),
    # Generous limits: the property is integrity, not how fast a bad link kills a connection.
    syn_retries=st.just(30),
    data_retries=st.just(40),
    max_rto=st.just(8.0),
    msl=st.just(1.0),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    up_len=sizes,
    down_len=sizes,
    forward=links,
    backward=links,
    client_config=configs,
    server_config=configs,
    seed=st.integers(0, 2**16),
)
def test_random_networks_never_break_the_byte_stream(
    up_len: int,
    down_len: int,
    forward: LinkConfig,
    backward: LinkConfig,
    client_config: TcpConfig,
    server_config: TcpConfig,
    seed: int,
) -> None:
    rng = random.Random(seed)
    up = rng.randbytes(up_len)
    down = rng.randbytes(down_len)
    r = run_transfer(
        up,
        down,
        forward=forward,
        backward=backward,
        client_config=client_config,
        server_config=server_config,
        client_write=lambda: rng.choice([1, 7, 100, 1460, 5000, 70000]),
        server_write=lambda: rng.randint(1, 3000),
        seed=seed,
        time_limit=1e6,
    )
    assert r.completed
    assert r.server_received == up
    assert r.client_received == down


def _segment(data: st.DataObject, base_seq: int, base_ack: int) -> TcpRepr:
    near = st.integers(-70_000, 70_000)
    seq = (base_seq + data.draw(near)) & 0xFFFFFFFF
    ack = (base_ack + data.draw(near)) & 0xFFFFFFFF
    flags = TcpFlags(data.draw(st.integers(0, 0x3F)))
    return TcpRepr(
        src_port=80,
        dst_port=40000,
        seq=data.draw(st.sampled_from([seq, data.draw(st.integers(0, 0xFFFFFFFF))])),
        ack=ack,
        flags=flags,
        window=data.draw(st.integers(0, 0xFFFF)),
        mss=data.draw(st.none() | st.integers(0, 0xFFFF)),
        window_scale=data.draw(st.none() | st.integers(0, 255)),
        sack_permitted=data.draw(st.booleans()),
        sack_blocks=tuple(
            data.draw(
                st.lists(
                    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=4
                )
            )
        ),
        timestamp=data.draw(
            st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
        ),
        payload=data.draw(st.binary(max_size=3000)),
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data(), close_first=st.booleans(), config=st.sampled_from([PLAIN, TcpConfig()]))
def test_random_segments_never_crash(
    data: st.DataObject, close_first: bool, config: TcpConfig
) -> None:
    """Garbage, replays and attacks in any state only ever produce segments and events."""
    p = Pair(config)
    p.handshake()
    p.a.send(b"hello" * 1000)
    if close_first:
        p.a.close()
    p.flush()
    a: TcpConnection = p.a
    now = p.now
    for _ in range(data.draw(st.integers(1, 30))):
        now += data.draw(st.sampled_from([0.0, 0.01, 1.0, 100.0]))
        s = _segment(data, a.rcv_nxt, a.snd_una)
        a.receive_segment(s, now)
        for out in a.poll(now):
            assert 0 <= out.seq <= 0xFFFFFFFF and 0 <= out.ack <= 0xFFFFFFFF
            assert 0 <= out.window <= 0xFFFF
        a.recv()
        a.events()
        t = a.next_timeout()
        assert t is None or t >= now or a.state is TcpState.CLOSED or t > now - 1e9

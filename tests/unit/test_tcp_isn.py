"""RFC 6528 ISNs and RFC 7323 timestamp offsets: deterministic, keyed, clock-driven."""

from __future__ import annotations

import pytest

from guest.stack.tcp import IsnGenerator, TcpListener, rfc6528_isn, timestamp_offset
from tests.unit.tcp_helpers import CLIENT, SERVER, to_server

SECRET = b"0123456789abcdef"


def test_isn_is_deterministic_for_the_same_inputs() -> None:
    assert rfc6528_isn(SECRET, SERVER, CLIENT, 12.5) == rfc6528_isn(SECRET, SERVER, CLIENT, 12.5)


def test_isn_advances_with_a_4_microsecond_clock() -> None:
    a = rfc6528_isn(SECRET, SERVER, CLIENT, 100.0)
    b = rfc6528_isn(SECRET, SERVER, CLIENT, 101.0)
    assert (b - a) & 0xFFFFFFFF == 250_000


def test_isn_depends_on_tuple_and_secret() -> None:
    base = rfc6528_isn(SECRET, SERVER, CLIENT, 0.0)
    assert rfc6528_isn(SECRET, SERVER, ("10.0.0.1", 40001), 0.0) != base
    assert rfc6528_isn(b"another secret", SERVER, CLIENT, 0.0) != base
    assert 0 <= base <= 0xFFFFFFFF


def test_generator_and_timestamp_offset() -> None:
    gen = IsnGenerator(SECRET)
    assert gen(SERVER, CLIENT, 3.0) == rfc6528_isn(SECRET, SERVER, CLIENT, 3.0)
    assert gen.ts_offset(SERVER, CLIENT) == timestamp_offset(SECRET, SERVER, CLIENT)
    with pytest.raises(ValueError):
        IsnGenerator(b"")


def test_listener_uses_the_isn_function() -> None:
    gen = IsnGenerator(SECRET)
    lst = TcpListener(SERVER, isn=gen, ts_offset=gen.ts_offset)
    conn = lst.receive_segment(to_server(1, 0, "S", timestamp=(5, 0)), CLIENT, 7.0).connection
    assert conn is not None
    (syn_ack,) = conn.poll(7.0)
    assert syn_ack.seq == gen(SERVER, CLIENT, 7.0)
    assert syn_ack.timestamp is not None
    assert syn_ack.timestamp[0] == (7000 + gen.ts_offset(SERVER, CLIENT)) & 0xFFFFFFFF

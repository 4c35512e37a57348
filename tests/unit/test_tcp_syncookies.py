"""SYN cookies (RFC 4987, Linux's encoding): the cookie arithmetic, and a listener under a
flood of spoofed SYNs that still lets a legitimate client in at once, where a listener
without cookies (the control) leaves it knocking."""

from __future__ import annotations

import random

import pytest

from guest.stack.tcp import TcpConfig, TcpConnection, TcpListener
from guest.stack.tcp.state import TcpState
from guest.stack.tcp.syncookies import (
    MAX_AGE,
    MSS_TABLE,
    PERIOD,
    SynCookies,
    decode_ts_options,
    encode_ts_options,
)
from guest.stack.wire.tcp import TcpFlags, TcpRepr

SERVER = ("198.18.1.2", 80)
CLIENT = ("198.18.1.1", 40000)
COOKIES = SynCookies(b"secret")


@pytest.mark.parametrize(
    ("mss", "carried"), [(1460, 1460), (1448, 1440), (1400, 1300), (600, 536), (100, 536)]
)
def test_a_cookie_carries_the_largest_mss_not_above_the_clients(mss: int, carried: int) -> None:
    cookie = COOKIES.make(SERVER, CLIENT, 12345, mss, now=1000.0)
    assert COOKIES.check(SERVER, CLIENT, 12345, cookie, now=1000.0) == carried
    assert carried in MSS_TABLE


def test_a_cookie_is_bound_to_its_connection_secret_and_age() -> None:
    cookie = COOKIES.make(SERVER, CLIENT, 12345, 1460, now=1000.0)
    assert COOKIES.check(SERVER, ("198.18.1.9", 40000), 12345, cookie, 1000.0) is None
    assert SynCookies(b"other").check(SERVER, CLIENT, 12345, cookie, 1000.0) is None
    assert COOKIES.check(SERVER, CLIENT, 12345, cookie ^ 0x10, 1000.0) is None
    assert COOKIES.check(SERVER, CLIENT, 12345, cookie, 1000.0 + MAX_AGE * PERIOD) == 1460
    assert COOKIES.check(SERVER, CLIENT, 12345, cookie, 1000.0 + (MAX_AGE + 1) * PERIOD) is None


def test_forged_cookies_almost_never_pass() -> None:
    rng = random.Random(4)
    passed = sum(
        COOKIES.check(SERVER, CLIENT, 777, rng.getrandbits(32), 500.0) is not None
        for _ in range(20_000)
    )
    assert passed <= 2  # 4 valid values in 2^24 per counter step: about 0.015 expected


@pytest.mark.parametrize(("wscale", "sack"), [(7, True), (0, False), (None, True), (14, False)])
def test_the_options_ride_in_the_tsval_low_bits_never_ahead_of_the_clock(
    wscale: int | None, sack: bool
) -> None:
    for tsval in (0x1000, 0x1003, 0x103F, 0xFFFFFFC1):
        encoded = encode_ts_options(tsval, wscale, sack)
        assert decode_ts_options(encoded) == (wscale, sack)
        assert 0 <= (tsval - encoded) & 0xFFFFFFFF < 128  # at most two 64-tick steps behind
    assert decode_ts_options(None) == (None, False)


# --------------------------------------------------------------------------- a listener


def _syn_from(port: int, seq: int) -> TcpRepr:
    return TcpRepr(
        src_port=port, dst_port=SERVER[1], seq=seq, ack=0, flags=TcpFlags.SYN, window=64240,
        mss=1460, window_scale=7, sack_permitted=True, timestamp=(seq, 0),
    )  # fmt: skip


def _flood(listener: TcpListener, count: int, now: float) -> list[TcpConnection]:
    """`count` SYNs from spoofed sources of the subnet that will never answer."""
    rng = random.Random(8)
    half_open = []
    for k in range(count):
        remote = (f"198.18.1.{10 + k % 200}", 1024 + k)
        result = listener.receive_segment(_syn_from(remote[1], rng.getrandbits(32)), remote, now)
        if result.connection is not None:
            half_open.append(result.connection)
    return half_open


def _handshake(listener: TcpListener, now: float) -> tuple[TcpConnection, TcpConnection | None]:
    """A real client connects: its SYN, the listener's answer, its ACK (with data)."""
    client = TcpConnection(CLIENT, SERVER, TcpConfig(), isn=99, ts_offset=5)
    client.connect()
    (syn,) = client.poll(now)
    result = listener.receive_segment(syn, CLIENT, now)
    server = result.connection
    answer = result.reply if server is None else server.poll(now)[0]
    if answer is None:
        return client, None
    client.receive_segment(answer, now + 0.001)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    for seg in client.poll(now + 0.001):
        result = listener.receive_segment(seg, CLIENT, now + 0.002)
        if server is None:
            server = result.connection
        else:
            server.receive_segment(seg, now + 0.002)
    return client, server


def test_under_a_syn_flood_a_legitimate_client_gets_in_at_once() -> None:
    listener = TcpListener(SERVER, TcpConfig(), isn=lambda *_: 1, backlog=16, cookies=COOKIES)
    half_open = _flood(listener, 3000, now=10.0)
    assert len(half_open) == 16 and listener.pending == 16  # state stays bounded
    assert listener.syncookies_sent == 3000 - 16
    client, server = _handshake(listener, now=10.5)
    assert client.state is TcpState.ESTABLISHED
    assert server is not None and server.state is TcpState.ESTABLISHED
    assert server.recv() == b"GET / HTTP/1.0\r\n\r\n"
    assert listener.syncookies_validated == 1 and listener.accept() is server
    # MSS, window scale, SACK and timestamps survived the stateless handshake.
    assert server.negotiated == client.negotiated | {"mss": server.negotiated["mss"]}
    assert server.negotiated["sack"] and server.negotiated["timestamps"]


def test_control_without_cookies_the_flood_locks_the_client_out() -> None:
    listener = TcpListener(
        SERVER, TcpConfig(syncookies=False), isn=lambda *_: 1, backlog=16, cookies=COOKIES
    )
    _flood(listener, 3000, now=10.0)
    client, server = _handshake(listener, now=10.5)
    assert server is None and client.state is TcpState.SYN_SENT
    assert listener.syns_dropped == 3000 - 16 + 1


def test_an_ack_with_a_forged_cookie_gets_a_reset() -> None:
    listener = TcpListener(SERVER, TcpConfig(), isn=lambda *_: 1, backlog=1, cookies=COOKIES)
    _flood(listener, 2, now=10.0)  # a cookie went out: cookie ACKs are looked at
    ack = TcpRepr(
        src_port=CLIENT[1], dst_port=80, seq=1001, ack=0x12345678, flags=TcpFlags.ACK, window=1
    )
    result = listener.receive_segment(ack, CLIENT, 10.1)
    assert result.connection is None and result.reply is not None
    assert result.reply.flags & TcpFlags.RST and listener.syncookies_failed == 1

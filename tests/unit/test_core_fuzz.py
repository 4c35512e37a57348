"""Property tests: whatever arrives, `receive_frame` never raises and every frame is counted.

The stacks run with `strict=True`, so an internal error (an exception that is not a counted
`WireError`) fails the test instead of being swallowed into the "internal-error" counter.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest.stack.core import NetStack
from guest.stack.wire.addr import MAC_BROADCAST, MAC_ZERO, ipv4
from guest.stack.wire.arp import OP_REQUEST, ArpRepr
from guest.stack.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.icmp import TYPE_ECHO_REQUEST, UNREACH_PORT, Icmpv4Repr
from guest.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr
from guest.stack.wire.udp import UdpRepr

US_MAC = bytes.fromhex("525400aa0001")
US = ipv4("198.18.1.1")
PEER_MAC = bytes.fromhex("525400bb0002")
PEER = ipv4("198.18.1.2")


def _eth(payload: bytes, ethertype: int = ETHERTYPE_IPV4, dst: bytes = US_MAC) -> bytes:
    head = bytearray(14)
    EthernetRepr(PEER_MAC, dst, ethertype).emit(head, 0)
    return bytes(head) + payload


def _ip(proto: int, payload: bytes, **kw: object) -> bytes:
    head = bytearray(20)
    Ipv4Repr(PEER, US, proto, len(payload), **kw).emit(head, 0)  # type: ignore[arg-type]
    return bytes(head) + payload


def _tcp(seg: TcpRepr) -> bytes:
    buf = bytearray(seg.buffer_len())
    seg.emit(buf, 0, PEER, US)
    return _eth(_ip(PROTO_TCP, bytes(buf)))


def _templates() -> list[bytes]:
    """Valid frames reaching every branch: ARP, ICMP echo and error, UDP open and closed
    ports, TCP SYN to a listener and to a closed port, data, fragments."""
    arp = bytearray(28)
    ArpRepr(OP_REQUEST, PEER_MAC, PEER, MAC_ZERO, US).emit(arp, 0)
    echo = Icmpv4Repr(TYPE_ECHO_REQUEST, 0, 1, 2, b"abcdefgh" * 8)
    echo_buf = bytearray(echo.buffer_len())
    echo.emit(echo_buf, 0)
    udp = bytearray(8 + 32)
    UdpRepr(4000, 5000, b"u" * 32).emit(udp, 0, PEER, US)
    closed = bytearray(8 + 4)
    UdpRepr(4000, 5001, b"nope").emit(closed, 0, PEER, US)
    quote = bytearray(20)
    Ipv4Repr(US, PEER, PROTO_UDP, 12).emit(quote, 0)
    unreach = Icmpv4Repr.dst_unreachable(UNREACH_PORT, bytes(quote) + b"\x13\x88\x0f\xa0" * 3)
    unreach_buf = bytearray(unreach.buffer_len())
    unreach.emit(unreach_buf, 0)
    syn = TcpRepr(
        40000, 80, 1000, 0, TcpFlags.SYN, 65535, mss=1460, window_scale=7, sack_permitted=True
    )
    syn.timestamp = (1, 0)
    data = TcpRepr(40000, 80, 1001, 1, TcpFlags.ACK | TcpFlags.PSH, 65535, payload=b"d" * 100)
    data.timestamp = (2, 0)
    return [
        _eth(bytes(arp), ETHERTYPE_ARP, MAC_BROADCAST),
        _eth(_ip(PROTO_ICMP, bytes(echo_buf))),
        _eth(_ip(PROTO_ICMP, bytes(unreach_buf))),
        _eth(_ip(PROTO_UDP, bytes(udp))),
        _eth(_ip(PROTO_UDP, bytes(closed))),
        _eth(_ip(PROTO_ICMP, bytes(echo_buf[:16]), ident=5, more_frags=True)),
        _eth(_ip(PROTO_ICMP, bytes(echo_buf[16:]), ident=5, frag_offset=16)),
        _tcp(syn),
        _tcp(TcpRepr(40001, 81, 7, 0, TcpFlags.SYN, 1024)),
        _tcp(data),
        _tcp(TcpRepr(40000, 80, 1001, 1, TcpFlags.RST, 0)),
    ]


TEMPLATES = _templates()


def _stack() -> NetStack:
    st_ = NetStack(US_MAC, "198.18.1.1/24", secret=b"fuzz", strict=True)
    st_.tcp_listen(80, backlog=4)
    st_.udp_bind(5000)
    return st_


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "zero-csum"]))
        if op == "flip" and frame:
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del frame[draw(st.integers(0, len(frame))) :]
        elif op == "extend":
            frame += draw(st.binary(max_size=64))
        elif op == "zero-csum" and len(frame) > 26:
            frame[24:26] = b"\x00\x00"  # IPv4 header checksum
    return bytes(frame)


frames_strategy = st.lists(
    st.one_of(st.binary(max_size=200), mutated(), st.sampled_from(TEMPLATES)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frames_strategy, offload=st.booleans())
def test_receive_frame_never_raises_and_counts(frames: list[bytes], offload: bool) -> None:
    stack = _stack()
    now = 1.0
    for frame in frames:
        before = stack.counters.frames_in
        stack.receive_frame(frame, now, checksum_ok=offload)
        assert stack.counters.frames_in == before + 1
        for out in stack.poll(now):
            assert len(out) >= 14
        stack.events()
        now += 0.01
    assert "internal-error" not in stack.counters.drops
    # Time still moves the stack along without surprises.
    for _ in range(3):
        t = stack.next_timeout()
        if t is None:
            break
        stack.poll(max(t, now))
        now = max(t, now) + 0.001
    assert stack.counters.bytes_in == sum(len(f) for f in frames)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=100))
def test_memoryview_input_of_any_format(data: bytes) -> None:
    """Views in other formats (as a ring buffer might hand out) are read as bytes."""
    stack = _stack()
    frame = TEMPLATES[3] + data
    view = memoryview(frame + b"\x00" * (-len(frame) % 4)).cast("I")
    stack.receive_frame(view, 0.0)
    assert stack.counters.frames_in == 1
    assert "internal-error" not in stack.counters.drops

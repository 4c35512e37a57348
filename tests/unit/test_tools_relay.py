"""The impairment relay's decisions, without sockets: what is forwarded, when, and how damaged.

Frames are built with the stack's own wire codecs, so that "a receiver drops it on the
checksum" is checked by an independent parser, not by the relay's idea of the format.
"""

from __future__ import annotations

import random
import struct

import pytest

from guest.stack.wire.addr import ipv4
from guest.stack.wire.errors import WireError
from guest.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetRepr
from guest.stack.wire.frame import emit_tcp_frame, tcp_payload_offset
from guest.stack.wire.ipv4 import Ipv4Packet, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpRepr
from guest.testing.impairment import LinkConfig
from guest.tools.relay import (
    ETH_HLEN,
    Relay,
    SeqWatch,
    build_parser,
    config_from_args,
    corrupt_frame,
)

SRC, DST = ipv4("198.18.78.1"), ipv4("198.18.78.2")
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
CLEAN = LinkConfig(delay=0.001)


def tcp_frame(
    seq: int,
    payload: bytes = b"",
    flags: TcpFlags = TcpFlags.ACK,
    sport: int = 40000,
    dport: int = 7101,
    pad_to: int = 0,
) -> bytes:
    """A valid Ethernet/IPv4/TCP frame (checksums filled in), optionally padded."""
    tcp = TcpRepr(sport, dport, seq, 1, flags, 512)
    ip = Ipv4Repr(SRC, DST, 0, 0, ident=7, dont_frag=True)
    eth = EthernetRepr(MAC_A, MAC_B, ETHERTYPE_IPV4)
    start = tcp_payload_offset(tcp)
    buf = bytearray(start + len(payload))
    buf[start:] = payload
    length = emit_tcp_frame(buf, eth, ip, tcp, len(payload))
    return bytes(buf[:length]).ljust(pad_to, b"\0")


def arp_frame() -> bytes:
    """A broadcast ARP request from A for B."""
    sender, target = SRC.to_bytes(4, "big"), DST.to_bytes(4, "big")
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, sender, bytes(6), target)
    return b"\xff" * 6 + MAC_A + b"\x08\x06" + body


def frames(n: int) -> list[bytes]:
    """`n` distinct data segments of one flow."""
    return [tcp_frame(1000 + 100 * i, bytes([i % 256]) * 100) for i in range(n)]


def run(
    relay: Relay, sent: list[tuple[int, bytes]], gap: float = 0.0001
) -> list[tuple[int, bytes]]:
    """Offer (side, frame) pairs `gap` apart, then release everything; (out side, frame)."""
    now = 0.0
    out = []
    for side, frame in sent:
        out += relay.pop_due(now)
        relay.offer(side, frame, now)
        now += gap
    return out + relay.pop_due(now + 3600)


def checksums_ok(frame: bytes) -> bool:
    """Would a receiver that verifies checksums accept the frame?"""
    try:
        ip = Ipv4Repr.parse(frame[ETH_HLEN:])
        TcpRepr.parse(Ipv4Packet(frame[ETH_HLEN:]).payload, ip.src_addr, ip.dst_addr)
    except WireError:
        return False
    return True


# ---------------------------------------------------------------------------- forwarding


def test_clean_link_forwards_everything_in_order_to_the_other_side() -> None:
    relay = Relay(CLEAN, seed=1)
    sent = frames(50)
    out = run(relay, [(0, f) for f in sent] + [(1, f) for f in sent])
    assert [f for side, f in out if side == 1] == sent  # a -> b
    assert [f for side, f in out if side == 0] == sent  # b -> a
    for name in ("a_to_b", "b_to_a"):
        st = relay.stats()[name]
        assert st["offered"] == st["delivered"] == 50
        assert st["lost"] == st["duplicated"] == st["corrupted"] == st["reordered"] == 0
    assert relay.pending == 0


def test_a_frame_is_held_for_the_delay() -> None:
    relay = Relay(LinkConfig(delay=0.005), seed=1)
    relay.offer(0, b"frame", 10.0)
    assert relay.next_due() == pytest.approx(10.005)
    assert relay.pop_due(10.004) == []
    assert relay.pop_due(10.005) == [(1, b"frame")]
    assert relay.next_due() is None


def test_reordered_frames_are_overtaken_and_released_by_due_time() -> None:
    relay = Relay(LinkConfig(delay=0.001, reorder=0.3, reorder_delay=0.01), seed=3)
    sent = frames(200)
    out = [f for _, f in run(relay, [(0, f) for f in sent], gap=0.0005)]
    assert sorted(out) == sorted(sent)  # nothing lost or added
    assert out != sent  # but some were overtaken
    assert relay.stats()["a_to_b"]["reordered"] > 0


# ---------------------------------------------------------------------------- the model's rates


def test_seeded_runs_repeat_exactly_and_seeds_differ() -> None:
    config = LinkConfig(delay=0.001, loss=0.05, duplicate=0.05, corrupt=0.05, reorder=0.1)
    sent = [(i % 2, f) for i, f in enumerate(frames(400))]
    first, again, other = Relay(config, 7), Relay(config, 7), Relay(config, 8)
    out = run(first, sent)
    assert run(again, sent) == out
    assert first.stats() == again.stats()
    assert run(other, sent) != out


def test_directions_do_not_disturb_each_other() -> None:
    """What happens to a -> b frames does not depend on the b -> a traffic between them."""
    config = LinkConfig(delay=0.001, loss=0.1, duplicate=0.1, corrupt=0.1, reorder=0.1)
    a_only, mixed = Relay(config, 5), Relay(config, 5)
    sent = frames(300)
    for i, frame in enumerate(sent):
        a_only.offer(0, frame, i * 0.0001)
        for _ in range(3):
            mixed.offer(1, frame, i * 0.0001)
        mixed.offer(0, frame, i * 0.0001)
    out_a = a_only.pop_due(3600)
    assert [(side, f) for side, f in mixed.pop_due(3600) if side == 1] == out_a
    assert mixed.stats()["b_to_a"]["offered"] == 900
    assert mixed.stats()["a_to_b"] == a_only.stats()["a_to_b"]


def test_rates_follow_the_configuration() -> None:
    config = LinkConfig(delay=0.0, loss=0.02, duplicate=0.01, corrupt=0.005, reorder=0.1)
    relay = Relay(config, seed=78)
    n = 20_000
    out = run(relay, [(0, f) for f in frames(n)], gap=0.0)
    st = relay.stats()["a_to_b"]
    assert st["offered"] == n
    for key, p in (("lost", 0.02), ("duplicated", 0.01), ("corrupted", 0.005)):
        assert abs(st[key] - p * n) < 5 * (p * n) ** 0.5, (key, st)  # within 5 sigma
    # Corruption is drawn only for frames not lost, reordering only for frames delivered.
    assert abs(st["reordered"] - 0.1 * (n - st["lost"])) < 5 * (0.1 * n) ** 0.5, st
    assert st["delivered"] == len(out) == n - st["lost"] + st["duplicated"]


def test_duplicates_are_identical_copies() -> None:
    relay = Relay(LinkConfig(delay=0.0, duplicate=1.0), seed=2)
    sent = frames(20)
    out = [f for _, f in run(relay, [(0, f) for f in sent])]
    assert sorted(out) == sorted(sent + sent)


# ---------------------------------------------------------------------------- corruption


def test_corruption_damages_one_byte_of_the_ip_packet_and_checksums_catch_it() -> None:
    relay = Relay(LinkConfig(delay=0.0, corrupt=1.0), seed=4)
    sent = [tcp_frame(1000 + i, bytes(range(i % 50))) for i in range(300)]
    assert all(checksums_ok(f) for f in sent)
    out = [f for _, f in run(relay, [(0, f) for f in sent])]
    assert len(out) == len(sent)
    positions = set()
    for before, after in zip(sent, out, strict=True):
        diff = [i for i in range(len(before)) if before[i] != after[i]]
        assert len(diff) == 1 and len(after) == len(before)
        assert ETH_HLEN <= diff[0] < len(before)  # never the Ethernet header
        assert not checksums_ok(after)
        positions.add(diff[0])
    assert min(positions) < ETH_HLEN + 20 <= max(positions)  # IP header and TCP both hit
    st = relay.stats()["a_to_b"]
    assert st["corrupted"] == st["delivered"] == 300 and st["corrupted_dropped"] == 0


def test_corruption_never_lands_in_ethernet_padding() -> None:
    frame = tcp_frame(5, pad_to=60)  # 54 bytes of headers, 6 of padding
    rng = random.Random(0)
    for _ in range(500):
        damaged = corrupt_frame(frame, rng)
        assert damaged is not None and damaged[54:] == frame[54:]
        assert not checksums_ok(bytes(damaged))


def test_corrupted_frames_without_a_checksum_are_dropped() -> None:
    """ARP has no checksum: damage would be delivered as truth, so it stands for an FCS drop."""
    relay = Relay(LinkConfig(delay=0.0, corrupt=1.0), seed=4)
    assert run(relay, [(1, arp_frame())] * 10) == []
    st = relay.stats()["b_to_a"]
    assert st["corrupted"] == st["corrupted_dropped"] == 10
    assert st["delivered"] == st["lost"] == 0
    assert corrupt_frame(b"\x00" * 14, random.Random(0)) is None


# ---------------------------------------------------------------------------- retransmissions


def test_seq_watch_counts_resent_sequence_space() -> None:
    watch = SeqWatch()
    syn = tcp_frame(999, flags=TcpFlags.SYN)
    data = [tcp_frame(1000 + 100 * i, b"x" * 100) for i in range(5)]
    for f in [syn, syn, *data, tcp_frame(1000, flags=TcpFlags.ACK)]:  # pure ACK: ignored
        watch.observe(f)
    assert (watch.segments, watch.retransmitted) == (7, 1)  # the second SYN
    watch.observe(data[2])  # a resend
    watch.observe(tcp_frame(1250, b"y" * 100))  # overlaps what was sent: a resend too
    watch.observe(tcp_frame(1500, b"z" * 10, TcpFlags.ACK | TcpFlags.FIN))  # new
    assert (watch.segments, watch.retransmitted) == (10, 3)
    watch.observe(tcp_frame(1510, flags=TcpFlags.ACK | TcpFlags.FIN))  # FIN resent alone
    assert watch.retransmitted == 4


def test_seq_watch_keeps_flows_apart_and_wraps() -> None:
    watch = SeqWatch()
    top = 0xFFFFFFFF - 50
    watch.observe(tcp_frame(top, b"a" * 100))  # crosses 2**32
    watch.observe(tcp_frame((top + 100) & 0xFFFFFFFF, b"b" * 100))
    watch.observe(tcp_frame(0, b"c" * 100, sport=40001))  # another flow: new
    assert watch.retransmitted == 0
    watch.observe(tcp_frame(top, b"a" * 100))
    assert (watch.segments, watch.retransmitted) == (4, 1)


def test_seq_watch_starts_over_on_a_new_connection() -> None:
    watch = SeqWatch()
    watch.observe(tcp_frame(5000, flags=TcpFlags.SYN))
    watch.observe(tcp_frame(5001, b"x" * 100))
    watch.observe(tcp_frame(10, flags=TcpFlags.SYN))  # same 4-tuple, new ISN
    watch.observe(tcp_frame(11, b"x" * 100))
    assert watch.retransmitted == 0


def test_relay_counts_what_each_sender_resent_before_impairment() -> None:
    relay = Relay(LinkConfig(delay=0.0, loss=1.0), seed=1)
    sent = frames(3)
    run(relay, [(0, f) for f in [*sent, sent[0]]])
    st = relay.stats()["a_to_b"]
    assert (st["tcp_segments"], st["tcp_retransmitted"], st["lost"]) == (4, 1, 4)


# ---------------------------------------------------------------------------- command line


def test_command_line_maps_onto_link_config() -> None:
    link = ["--loss", "2%", "--duplicate", "0.01", "--corrupt", "0.5%", "--reorder", "10%"]
    timing = ["--delay-ms", "1", "--reorder-delay-ms", "4", "--seed", "9"]
    args = build_parser().parse_args(["--a", "x", "--b", "y", *link, *timing])
    config = config_from_args(args)
    assert config == LinkConfig(
        delay=0.001, loss=0.02, duplicate=0.01, corrupt=0.005, reorder=0.1, reorder_delay=0.004
    )
    assert (args.a, args.b, args.seed) == ("x", "y", 9)
    assert config_from_args(build_parser().parse_args(["--a", "x", "--b", "y"])) == LinkConfig(
        delay=0.0
    )


@pytest.mark.parametrize("bad", ["-0.1", "1.5", "150%", "lots"])
def test_command_line_rejects_impossible_probabilities(bad: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--a", "x", "--b", "y", "--loss", bad])

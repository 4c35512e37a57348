"""The forwarding extension's loop, policy and command line, without namespaces or rings."""

from __future__ import annotations

import os

import pytest

from guest.stack.extension.pump import EXTENSION, ExtensionLoop, per_frame
from guest.stack.extension.supervisor import parse_args
from guest.stack.factored import sandbox
from guest.stack.forward import Forwarder, Interface
from guest.stack.wire.checksum import checksum

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
PEER_A, PEER_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")


class FakeRing:
    """Stands in for a ring device: frames to hand out, frames sent, one request per batch."""

    def __init__(self) -> None:
        self.rx: list[list[memoryview]] = []
        self.sent: list[bytes] = []
        self.batches = 0
        self.tx_pending = 0
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def recv_batch(self, max_frames: int) -> list[memoryview]:
        return self.rx.pop(0) if self.rx else []

    def send_batch(self, frames) -> int:
        self.batches += 1
        self.sent += [bytes(f) for f in frames]
        return len(frames)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


def _ipv4(src: str, dst: str, ttl: int = 64) -> bytearray:
    hdr = bytearray(20)
    hdr[0], hdr[2:4], hdr[8], hdr[9] = 0x45, (40).to_bytes(2, "big"), ttl, 17
    hdr[12:16] = bytes(map(int, src.split(".")))
    hdr[16:20] = bytes(map(int, dst.split(".")))
    hdr[10:12] = checksum(hdr).to_bytes(2, "big")
    return hdr + bytes(20)


def _frame() -> memoryview:
    """A writable frame, as a ring slot is: A's host to B's, via us."""
    return memoryview(bytearray(MAC_A + PEER_A + b"\x08\x00") + _ipv4("198.18.1.1", "198.18.2.1"))


def test_a_batch_is_forwarded_in_place_in_one_transmit_batch() -> None:
    fwd = Forwarder(
        [
            Interface.from_text("a", MAC_A.hex(":"), "198.18.1.2/24"),
            Interface.from_text("b", MAC_B.hex(":"), "198.18.2.2/24"),
        ]
    )
    rings = {"a": FakeRing(), "b": FakeRing()}
    loop = ExtensionLoop(fwd, rings)  # type: ignore[arg-type]
    # Teach the engine B's next hop (an ARP reply it did not ask for is ignored, so ask first).
    rings["a"].rx.append([_frame()])
    loop._drain("a", rings["a"])  # queued for ARP: the request goes out on b
    arp_request = rings["b"].sent[-1]
    reply = bytearray(42)
    reply[0:6], reply[6:12], reply[12:14] = MAC_B, PEER_B, b"\x08\x06"
    reply[14:22] = bytes.fromhex("0001080006040002")
    reply[22:28], reply[28:32] = PEER_B, bytes([198, 18, 2, 1])
    reply[32:38], reply[38:42] = MAC_B, bytes([198, 18, 2, 2])
    assert arp_request[12:14] == b"\x08\x06"
    rings["b"].rx.append([memoryview(reply)])
    loop._drain("b", rings["b"])  # the held frame is released
    before = rings["b"].batches
    frames = [_frame() for _ in range(10)]
    rings["a"].rx.append(frames)
    loop._drain("a", rings["a"])
    assert rings["b"].batches == before + 1  # ten frames, one transmit batch
    last = rings["b"].sent[-1]
    assert last[0:6] == PEER_B and last[6:12] == MAC_B and last[14 + 8] == 63
    stats = loop.counters()
    assert stats["in_place"] == 10 and stats["forwarded"] == 11, stats
    assert per_frame(stats)["frames_per_tx_batch"] > 1
    for ring in rings.values():
        ring.close()


def test_after_the_first_pass_only_the_rings_poll_names_are_read() -> None:
    """A pass reads the rings that have frames, not every ring: on request/response every
    frame is a pass of its own, and an empty read of the other NIC's ring costs as much as
    the engine's work on the frame."""
    fwd = Forwarder(
        [
            Interface.from_text("a", MAC_A.hex(":"), "198.18.1.2/24"),
            Interface.from_text("b", MAC_B.hex(":"), "198.18.2.2/24"),
        ]
    )
    rings = {"a": FakeRing(), "b": FakeRing()}
    loop = ExtensionLoop(fwd, rings)  # type: ignore[arg-type]
    reads = {"a": 0, "b": 0}

    def reader(name: str):
        def recv_batch(max_frames: int) -> list[memoryview]:
            reads[name] += 1
            if name == "a" and reads["a"] == 3:
                loop.stop()
            return []

        return recv_batch

    for name, ring in rings.items():
        ring.recv_batch = reader(name)  # type: ignore[method-assign]
    os.write(rings["a"]._w, b"x")  # a's descriptor stays readable, b's never is
    loop.run()
    assert reads == {"a": 3, "b": 1}, reads
    for ring in rings.values():
        ring.close()


def test_the_policy_builds_and_allows_no_socket_file_or_process_calls() -> None:
    sandbox.build_filter(EXTENSION.allow, rules=EXTENSION.rules)
    forbidden = {"socket", "openat", "open", "ioctl", "ptrace", "clone", "fork", "execve"}
    forbidden |= {"io_uring_setup", "io_uring_register", "sendto", "sendmsg", "bind", "kill"}
    assert not EXTENSION.allow & forbidden
    assert "io_uring_enter" in EXTENSION.allow and "poll" in EXTENSION.allow


def test_the_command_line() -> None:
    args = parse_args(["--iface", "e1", "--iface", "e2", "--addr", "e1=198.18.1.2/24",
                       "--addr", "e2=198.18.2.2/24", "--route", "198.19.0.0/16", "via",
                       "198.18.2.1"])  # fmt: skip
    assert args.addr == {"e1": "198.18.1.2/24", "e2": "198.18.2.2/24"} and args.confine
    for bad in (
        ["--iface", "e1", "--addr", "e2=198.18.1.2/24"],
        ["--iface", "e1", "--addr", "e1=198.18.1.2"],
        ["--iface", "e1", "--addr", "e1=198.18.1.2/24", "--route", "x", "by", "y"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)

"""The offload levers (`guest.stack.nic`): parsing, ethtool features, and the virtio_net_hdr
each frame of `NetStack` gets on the way out and gives on the way in. A fake device records
what it is handed, so the translation is checked without sockets (the VM and veth runs check
it against real kernels)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from guest.stack.core import NetStack, TsoFrame
from guest.stack.device.base import DeviceStats
from guest.stack.nic import Nic
from guest.stack.offloads import Offloads
from guest.stack.wire import vnet
from guest.testing.stack_sim import IP_B, MAC_A, MAC_B, StreamApp, make_network


class FakeDevice:
    """Records sends; hands out queued frames (each with a vnet header when enabled)."""

    name = "fake0"
    mtu = 1500
    mac = MAC_A

    def __init__(self, vnet_hdr: bool) -> None:
        self.vnet_hdr_len = vnet.HEADER_LEN if vnet_hdr else 0
        self.sent: list[tuple[bytes, bytes]] = []
        self.rx: list[bytes] = []
        self.stats = DeviceStats()

    def recv_batch(self, max_frames: int = 64) -> list[memoryview]:
        out, self.rx = self.rx[:max_frames], self.rx[max_frames:]
        return [memoryview(f) for f in out]

    def send_batch(self, frames: Iterable, headers: Sequence[bytes] | None = None) -> int:
        frames = list(frames)
        heads = headers if headers is not None else [b""] * len(frames)
        self.sent += [(bytes(h), bytes(f)) for h, f in zip(heads, frames, strict=True)]
        return len(frames)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("none", Offloads()),
        ("all", Offloads(True, True, True)),
        ("gro", Offloads(gro=True)),
        ("tso", Offloads(csum=True, tso=True)),  # TSO frames always carry the seed
        ("csum, gro", Offloads(csum=True, gro=True)),
    ],
)
def test_parse(text: str, want: Offloads) -> None:
    assert Offloads.parse(text) == want
    assert Offloads.parse(str(want)) == want


def test_parse_rejects_unknown_levers() -> None:
    with pytest.raises(ValueError, match="lro"):
        Offloads.parse("tso,lro")


def test_features_follow_the_levers() -> None:
    assert not any(Offloads().features.values())
    f = Offloads.parse("tso").features
    assert f["tso"] and f["gso"] and f["tx"] and f["sg"] and not f["gro"] and not f["lro"]
    assert Offloads.parse("gro").features["gro"]
    assert Offloads.parse("gro").vnet_hdr and not Offloads().vnet_hdr


def test_a_lever_needs_a_vnet_device() -> None:
    with pytest.raises(ValueError, match="vnet_hdr"):
        Nic(FakeDevice(vnet_hdr=False), Offloads(gro=True))  # type: ignore[arg-type]


def _established(offloads: Offloads) -> tuple[NetStack, int]:
    """Stack A (built as MonoStack builds it for `offloads`) with a connection to B."""
    nic = Nic(FakeDevice(offloads.vnet_hdr), offloads)  # type: ignore[arg-type]
    net = make_network(
        a={"tso_max_size": nic.tso_max_size, "tx_checksum_offload": nic.tx_checksum_offload}
    )
    net.b.serve(80, StreamApp)
    h = net.a.stack.tcp_connect(IP_B, 80, net.now)
    net.run(until=net.now + 2, stop=lambda: net.a.stack.socket_info(h)["state"] == "ESTABLISHED")
    return net.a.stack, h


def test_tso_frame_gets_a_gso_header() -> None:
    offloads = Offloads.parse("all")
    stack, h = _established(offloads)
    dev = FakeDevice(vnet_hdr=True)
    nic = Nic(dev, offloads)  # type: ignore[arg-type]
    stack.tcp_send(h, bytes(50_000))
    frames = stack.poll(0.5)
    assert any(type(f) is TsoFrame for f in frames)
    assert nic.transmit(frames) == len(frames)
    for head, frame in dev.sent:
        hdr = vnet.VnetHdr.parse(head)
        hdr.check(len(frame))  # what the kernel would refuse
        if len(frame) > 1514:
            assert hdr.gso_type == vnet.GSO_TCPV4 and hdr.gso_size == 1448
            assert (hdr.csum_start, hdr.csum_offset, hdr.hdr_len) == (34, 16, 66)
    assert nic.stats()["tx_tso_frames"] >= 1


def test_checksum_offload_headers_by_protocol() -> None:
    offloads = Offloads.parse("csum")
    stack, h = _established(offloads)
    dev = FakeDevice(vnet_hdr=True)
    nic = Nic(dev, offloads)  # type: ignore[arg-type]
    stack.tcp_send(h, b"x" * 100)
    udp = stack.udp_bind(5000)
    stack.udp_sendto(udp, b"y" * 100, IP_B, 9, 0.5)
    stack.udp_sendto(udp, b"z" * 4000, IP_B, 9, 0.5)  # fragmented: full checksum
    nic.transmit(stack.poll(0.5))
    kinds = {}
    for head, frame in dev.sent:
        proto = frame[23]
        frag = int.from_bytes(frame[20:22], "big") & 0x3FFF
        kinds.setdefault((proto, bool(frag)), set()).add(head)
    assert kinds[(6, False)] == {vnet.csum_offload(14, 20, 16).to_bytes()}
    assert kinds[(17, False)] == {vnet.csum_offload(14, 20, 6).to_bytes()}
    assert kinds[(17, True)] == {vnet.PLAIN_BYTES}


def test_without_levers_frames_go_bare() -> None:
    dev = FakeDevice(vnet_hdr=False)
    nic = Nic(dev, Offloads())  # type: ignore[arg-type]
    nic.transmit([bytearray(60)])
    assert dev.sent == [(b"", bytes(60))]


@pytest.mark.parametrize(
    ("flags", "trusted"),
    [(0, False), (vnet.F_DATA_VALID, True), (vnet.F_NEEDS_CSUM, True)],
)
def test_receive_strips_the_header_and_passes_the_checksum_verdict(
    flags: int, trusted: bool
) -> None:
    dev = FakeDevice(vnet_hdr=True)
    nic = Nic(dev, Offloads(gro=True))  # type: ignore[arg-type]
    frame = MAC_A + MAC_B + b"\x08\x00" + bytes(50)
    gso = vnet.GSO_TCPV4 if flags == vnet.F_NEEDS_CSUM else vnet.GSO_NONE
    dev.rx = [vnet.VnetHdr(flags=flags, gso_type=gso).to_bytes() + frame]
    got: list[tuple[bytes, bool]] = []
    n = nic.receive(lambda f, now, ok: got.append((bytes(f), ok)), 0.0, 16)
    assert n == 1 and got == [(frame, trusted)]
    assert nic.stats()["rx_gro_frames"] == (1 if gso else 0)

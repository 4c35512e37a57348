"""The stack's NIC: a `Device` plus the offload levers, translated for `NetStack`.

Per-frame Python work is what a user-level stack in Python pays most for, so the levers a
kernel uses to cut the number of frames matter more here than anywhere. Each is a switch, so a
benchmark can turn them on one at a time and report what each buys:

* `csum`: checksum offload. Frames go out with the pseudo-header seed in the TCP/UDP checksum
  and a virtio_net_hdr saying NEEDS_CSUM, for the NIC to finish; received frames the NIC (or
  the kernel) already verified say DATA_VALID and are not verified again.
* `tso`: segmentation offload. A `NetStack` connection emits its new data as super-segments
  of up to 64 KiB (`TcpConfig.tso_size`), each a `TsoFrame`; its virtio_net_hdr (GSO_TCPV4,
  gso_size = MSS) lets the e1000 cut it up (the kernel does it in software on NICs without
  TSO). Implies `csum`.
* `gro`: coalesced receive. The kernel's GRO merges consecutive segments of a flow before the
  packet tap sees them, so the stack receives one large segment instead of dozens.

Any lever on means PACKET_VNET_HDR on the socket: every frame carries the 10-byte header. The
device copies header and frame side by side into its slot (`Device.send(frame, header)`), so
`NetStack` frames need no headroom. `NetStack` is told about `csum` and `tso` (it must emit the
seed and the TSO frames); `gro` needs nothing from it, since it takes segments of any size.

The same object serves the monolithic stack and the factored stack's driver domain.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Final

from guest.stack.core.tcp_output import MAX_TSO_SIZE, TsoFrame
from guest.stack.device.base import Device
from guest.stack.offloads import Offloads
from guest.stack.wire import vnet

_L2: Final = 14
_IPV4: Final = b"\x08\x00"
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_FRAG: Final = struct.Struct("!H")
#: Received-frame flags that mean "checksum already checked or locally produced".
_CSUM_TRUSTED: Final = vnet.F_NEEDS_CSUM | vnet.F_DATA_VALID


class Nic:
    """Moves frames between a `Device` and a `NetStack`-shaped receiver, applying `Offloads`.

    `tso_max_size` and `tx_checksum_offload` are what the stack must be built with.
    """

    def __init__(self, dev: Device, offloads: Offloads):
        if offloads.vnet_hdr and dev.vnet_hdr_len != vnet.HEADER_LEN:
            raise ValueError(f"{dev.name}: offloads {offloads} need a device with vnet_hdr")
        self.dev = dev
        self.offloads = offloads
        self.vnet = dev.vnet_hdr_len == vnet.HEADER_LEN
        self.tso_max_size = MAX_TSO_SIZE if offloads.tso else 0
        self.tx_checksum_offload = offloads.csum
        self._headers: dict[tuple[int, int, int], bytes] = {}
        #: GRO super-segments received and TSO frames sent: against the device's frame
        #: counters they show how much each lever actually merged.
        self.rx_super = 0
        self.tx_super = 0

    # --- receive ----------------------------------------------------------------------------

    def receive(
        self, deliver: Callable[[memoryview, float, bool], None], now: float, max_frames: int
    ) -> int:
        """Hand up to `max_frames` received frames to `deliver(frame, now, checksum_ok)`;
        returns how many there were (0: nothing waiting)."""
        frames = self.dev.recv_batch(max_frames)
        if not self.vnet:
            for frame in frames:
                deliver(frame, now, False)
            return len(frames)
        trusted = _CSUM_TRUSTED
        for frame in frames:
            if frame[1]:  # gso_type: a GRO super-segment
                self.rx_super += 1
            deliver(frame[10:], now, bool(frame[0] & trusted))
        return len(frames)

    # --- transmit ---------------------------------------------------------------------------

    def transmit(self, frames: Iterable[bytearray]) -> int:
        """Queue `frames` (as `NetStack.poll` returns them) and flush; returns how many the
        device took (the rest are dropped, as a NIC with a full queue drops)."""
        if not self.vnet:
            return self.dev.send_batch(frames)
        frames = list(frames)
        return self.dev.send_batch(frames, [self._header(f) for f in frames])

    def _header(self, frame: bytearray) -> bytes:
        """The virtio_net_hdr for one frame of `NetStack`, cached by shape (a handful exist)."""
        if frame[12:14] != _IPV4:
            return vnet.PLAIN_BYTES  # ARP
        ihl = (frame[_L2] & 0x0F) << 2
        proto = frame[_L2 + 9]
        if type(frame) is TsoFrame:
            thl = (frame[_L2 + ihl + 12] >> 4) << 2
            key = (frame.mss, ihl, thl)
            hdr = self._headers.get(key)
            if hdr is None:
                hdr = vnet.tcp4_tso(_L2, ihl, thl, frame.mss).to_bytes()
                self._headers[key] = hdr
            self.tx_super += 1
            return hdr
        if not self.tx_checksum_offload or proto not in (_PROTO_TCP, _PROTO_UDP):
            return vnet.PLAIN_BYTES  # ICMP, or complete checksums
        if _FRAG.unpack_from(frame, _L2 + 6)[0] & 0x3FFF:
            return vnet.PLAIN_BYTES  # a fragment carries its full checksum
        key = (-proto, ihl, 0)
        hdr = self._headers.get(key)
        if hdr is None:
            offset = vnet.TCP_CSUM_OFFSET if proto == _PROTO_TCP else vnet.UDP_CSUM_OFFSET
            hdr = vnet.csum_offload(_L2, ihl, offset).to_bytes()
            self._headers[key] = hdr
        return hdr

    def stats(self) -> dict[str, object]:
        return {
            "offloads": str(self.offloads),
            "rx_gro_frames": self.rx_super,
            "tx_tso_frames": self.tx_super,
        }

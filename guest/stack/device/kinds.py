"""The ways a user-level stack can reach its NIC, by name: the one registry of device kinds.

Every command line (`--device`, `--stack-device`) and the host's lab-file schema take their
choices from `DEVICE_KINDS`, so adding a device is one entry here, not an edit per caller.
ring-v2 is the default: TPACKET_V3's block retire timer would hold a lone frame for up to a
scheduler tick, which request/response latency cannot afford.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .base import Device


@dataclass(frozen=True)
class DeviceKind:
    """One way to the NIC: how to open it, and which PACKET_MMAP version it maps (if any)."""

    description: str
    #: TPACKET version of its rings; None for a plain socket (no rings to share).
    ring_version: int | None
    open: Callable[[str, bool], Device]


def _packet(iface: str, vnet_hdr: bool) -> Device:
    from .packet import PacketDevice

    return PacketDevice(iface, vnet_hdr=vnet_hdr)


def _ring(version: int) -> Callable[[str, bool], Device]:
    def open_ring(iface: str, vnet_hdr: bool) -> Device:
        from .ring import RingDevice

        return RingDevice(iface, version=version, vnet_hdr=vnet_hdr)

    return open_ring


#: Device kind name -> how to open it; the default first.
DEVICE_KINDS: Final[dict[str, DeviceKind]] = {
    "ring-v2": DeviceKind("PACKET_MMAP rings, TPACKET_V2", 2, _ring(2)),
    "ring-v3": DeviceKind("PACKET_MMAP rings, TPACKET_V3 (block-based receive)", 3, _ring(3)),
    "packet": DeviceKind("a plain AF_PACKET socket, one syscall per frame", None, _packet),
}
DEFAULT_DEVICE: Final = next(iter(DEVICE_KINDS))


def open_device(kind: str, iface: str, vnet_hdr: bool = False) -> Device:
    """The NIC `iface` from user level, through the device kind named `kind`."""
    return DEVICE_KINDS[kind].open(iface, vnet_hdr)

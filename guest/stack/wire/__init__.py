"""Wire formats: zero-copy codecs per protocol, kept apart from protocol logic and devices.

Laid out after smoltcp's `wire` module. Each protocol module has
* a thin view class over a `memoryview` (`EthernetFrame`, `ArpPacket`, `Ipv4Packet`,
  `Icmpv4Packet`, `UdpPacket`, `TcpPacket`): fields read lazily with `struct`, `check_len()`
  validation, `new_checked()` for received bytes;
* a `*Repr` dataclass with `parse(...)` (validates, raises `WireError`, never anything else on
  bad bytes) and `emit(buf, offset, ...)` (writes into a caller-provided buffer, returns the
  number of bytes written).

Conventions: IPv4 addresses are ints, MACs are 6-byte `bytes` (see `addr.py`); all parsers
accept `bytes`, `bytearray` and `memoryview`; payloads are returned as `memoryview` slices of
the input. `frame.py` assembles whole frames in place; `ipv4_frag.py` reassembles fragments;
`vnet.py` is the virtio_net_hdr a packet socket with PACKET_VNET_HDR puts in front of frames.
"""

from .errors import WireError

__all__ = ["WireError"]

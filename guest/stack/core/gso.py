"""Software segmentation of a `TsoFrame`: what a TSO-capable NIC does in hardware.

A device without TCP segmentation offload (or a test link) calls `segment_tso` to cut one large
frame into MTU-sized ones: headers copied from the large frame, IPv4 Total Length and
identification advanced per piece, TCP sequence number advanced by the bytes before it, PSH
and FIN kept only on the last piece, every checksum recomputed. This is the contract e1000's
TCP segmentation context implements, so the stack's output is the same with and without it.
"""

from __future__ import annotations

import struct

from guest.stack.wire.checksum import checksum, fold, pseudo_header_sum, raw_sum
from guest.stack.wire.ethernet import HEADER_LEN as ETH_LEN

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PSH_FIN = 0x08 | 0x01


def segment_tso(frame: bytes | bytearray, mss: int) -> list[bytearray]:
    """Cut an Ethernet/IPv4/TCP frame into frames of at most `mss` TCP payload bytes."""
    view = memoryview(frame)
    ihl = (view[ETH_LEN] & 0x0F) * 4
    tcp_at = ETH_LEN + ihl
    thl = (view[tcp_at + 12] >> 4) * 4
    data_at = tcp_at + thl
    payload = view[data_at:]
    n = len(payload)
    if n <= mss:
        return [bytearray(frame)]
    headers = view[:data_at]
    ident = _U16.unpack_from(view, ETH_LEN + 4)[0]
    seq = _U32.unpack_from(view, tcp_at + 4)[0]
    flags = view[tcp_at + 13]
    src = _U32.unpack_from(view, ETH_LEN + 12)[0]
    dst = _U32.unpack_from(view, ETH_LEN + 16)[0]
    out = []
    for i, off in enumerate(range(0, n, mss)):
        piece = payload[off : off + mss]
        k = len(piece)
        buf = bytearray(data_at + k)
        buf[:data_at] = headers
        buf[data_at:] = piece
        _U16.pack_into(buf, ETH_LEN + 2, ihl + thl + k)
        _U16.pack_into(buf, ETH_LEN + 4, (ident + i) & 0xFFFF)
        buf[ETH_LEN + 10 : ETH_LEN + 12] = b"\x00\x00"
        _U16.pack_into(buf, ETH_LEN + 10, checksum(memoryview(buf)[ETH_LEN:tcp_at]))
        _U32.pack_into(buf, tcp_at + 4, (seq + off) & 0xFFFFFFFF)
        if off + k < n:
            buf[tcp_at + 13] = flags & ~_PSH_FIN
        buf[tcp_at + 16 : tcp_at + 18] = b"\x00\x00"
        segment = memoryview(buf)[tcp_at:]
        total = raw_sum(segment) + pseudo_header_sum(src, dst, 6, thl + k)
        _U16.pack_into(buf, tcp_at + 16, ~fold(total) & 0xFFFF)
        out.append(buf)
    return out

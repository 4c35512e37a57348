"""The plain packet socket: one AF_PACKET/SOCK_RAW socket, one syscall and one copy per frame.

This is the baseline the ring (`ring.py`) is measured against, and the fallback that works
everywhere. What makes it usable at all:

* large socket buffers forced with SO_RCVBUFFORCE/SO_SNDBUFFORCE (we are root in the guest):
  with the 208 KiB default a Python receiver loses frames while its CPU is idle, because a
  burst arrives faster than one recv() per frame can drain it;
* PACKET_IGNORE_OUTGOING, so an ETH_P_ALL socket does not receive every frame the host
  sends (including our own) as an extra copy to filter out;
* receive with `recv_into` into buffers allocated once, with MSG_TRUNC so the kernel reports
  the real length of a frame that did not fit (it is then counted and dropped, never passed
  up half);
* optional PACKET_QDISC_BYPASS: frames go straight to the driver. Faster, but there is no
  qdisc to absorb bursts, so a full NIC queue means ENOBUFS (`send()` returns False).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Sequence

from ..wire.vnet import HEADER_LEN as VNET_HEADER_LEN
from . import abi
from .base import DeviceStats, Frame, send_each

#: Receive buffer for frames carrying a virtio_net_hdr: GRO may hand up 64 KiB segments.
GRO_MAX_FRAME = 65536 + abi.ETH_HLEN + abi.VLAN_HLEN


class PacketDevice:
    """`base.Device` over a plain AF_PACKET socket bound to `iface`."""

    def __init__(
        self,
        iface: str,
        *,
        protocol: int = abi.ETH_P_ALL,
        vnet_hdr: bool = False,
        qdisc_bypass: bool = False,
        rcvbuf: int = 32 << 20,
        sndbuf: int = 8 << 20,
    ) -> None:
        """Open and bind the socket. `protocol` is an ethertype (host order) or ETH_P_ALL;
        one socket binds one protocol, so IPv4+ARP needs ETH_P_ALL (or two devices)."""
        self.name = iface
        self.vnet_hdr_len = VNET_HEADER_LEN if vnet_hdr else 0
        self._stats = DeviceStats()
        self._closed = False
        # Protocol 0 until bind: the socket receives nothing before it is configured.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            abi.force_buffers(sock, rcvbuf, sndbuf)
            abi.set_int_option(sock, abi.PACKET_IGNORE_OUTGOING, 1)
            if vnet_hdr:
                abi.set_int_option(sock, abi.PACKET_VNET_HDR, 1)
            if qdisc_bypass:
                abi.set_int_option(sock, abi.PACKET_QDISC_BYPASS, 1)
            self.mtu = abi.link_mtu(sock, iface)
            self.mac = abi.link_mac(sock, iface)
            sock.bind((iface, protocol))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        #: Largest frame (Ethernet header included, vnet header excluded) received whole.
        self.max_rx_frame = GRO_MAX_FRAME if vnet_hdr else self.mtu + abi.ETH_HLEN + abi.VLAN_HLEN
        self._rx_size = self.max_rx_frame + self.vnet_hdr_len
        self._rx_bufs: list[memoryview] = []
        self._handed_out: list[memoryview] = []

    @property
    def stats(self) -> DeviceStats:
        """Counters, with the kernel's drop count (reset on read there) folded in."""
        if not self._closed:
            self._read_kernel_drops()
        return self._stats

    def _read_kernel_drops(self) -> None:
        drops, _ = abi.read_drops(self._sock)
        self._stats.rx_dropped += drops

    def fileno(self) -> int:
        """The socket: readable when a frame waits, writable when the send buffer has room."""
        return self._sock.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[memoryview]:
        """Up to `max_frames` frames, one recv_into() each, until the socket is empty."""
        self._release()
        bufs = self._rx_bufs
        while len(bufs) < max_frames:  # grown once, to the largest batch ever asked for
            bufs.append(memoryview(bytearray(self._rx_size)))
        recv_into = self._sock.recv_into
        size = self._rx_size
        out = self._handed_out
        nbytes = 0
        for i in range(max_frames):
            buf = bufs[i]
            try:
                n = recv_into(buf, size, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            if n > size:  # MSG_TRUNC: n is the frame's real length
                self._stats.rx_truncated += 1
                continue
            out.append(buf[:n])
            nbytes += n
        if out:
            stats = self._stats
            stats.rx_frames += len(out)
            stats.rx_bytes += nbytes - len(out) * self.vnet_hdr_len
            stats.rx_batches += 1
        return list(out)

    def send(self, frame: Frame, header: bytes = b"") -> bool:
        """Send `header` + `frame` now (gathered by the kernel, no join here). False if the
        socket buffer or the NIC queue is full; ValueError if the kernel refuses the frame
        itself (too long for the MTU, bad vnet header)."""
        try:
            if header:
                self._sock.sendmsg((header, frame))
            else:
                self._sock.send(frame)
        except OSError as exc:
            if abi.is_no_room(exc):
                self._stats.tx_full += 1
                return False
            self._stats.tx_errors += 1
            raise ValueError(f"{self.name}: frame of {len(frame)} bytes refused: {exc}") from exc
        stats = self._stats
        stats.tx_frames += 1
        stats.tx_bytes += len(frame) + len(header) - self.vnet_hdr_len
        stats.tx_batches += 1
        return True

    def send_batch(self, frames: Iterable[Frame], headers: Sequence[bytes] | None = None) -> int:
        """One send() per frame (Python has no sendmmsg); stops at the first refusal.
        `headers[i]`, if given, goes in front of the i-th frame."""
        return send_each(self.send, frames, headers)

    def flush(self) -> None:
        """Nothing is ever queued here: `send()` hands each frame to the kernel at once."""

    @property
    def tx_pending(self) -> int:
        """Always 0: a frame `send()` accepted is already the kernel's."""
        return 0

    def close(self) -> None:
        """Close the socket; frames from the last `recv_batch()` become invalid."""
        if self._closed:
            return
        self._release()
        self._read_kernel_drops()  # the last chance: the counter dies with the socket
        self._closed = True
        self._sock.close()
        self._rx_bufs.clear()

    def _release(self) -> None:
        """End the lifetime of the frames handed out by the previous `recv_batch()`."""
        for view in self._handed_out:
            with contextlib.suppress(BufferError):  # exported further by the caller: let it be
                view.release()
        self._handed_out.clear()

    def __enter__(self) -> PacketDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

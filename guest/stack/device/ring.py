"""PACKET_MMAP: receive and transmit rings shared with the kernel (Documentation/networking/
packet_mmap.rst). Frames are read where the kernel wrote them and many frames move per syscall.

One socket, one `mmap` holding the RX ring then the TX ring (the kernel maps them in that
order), one TPACKET version for both (the version is per socket):

* TPACKET_V3 (default). RX is block-based: the kernel fills a block with frames back to back
  and hands the whole block over (block_status gets TP_STATUS_USER) when it is full or when
  the retire timer fires (`retire_ms`); one wakeup yields many frames. TX (Linux 4.11+) uses
  fixed-size slots like V2, with tpacket3_hdr and tp_next_offset == 0.
  Caveat: a frame is visible only once its block is retired, so a lone frame waits up to
  `retire_ms`, rounded up to whole jiffies (4 ms with the HZ=250 Debian kernel): fine for
  bulk transfer, bad for request/response latency.
* TPACKET_V2. RX is slot-based: one tp_status per frame, visible (and poll() wakes) as soon
  as the frame is written. Use it when latency matters.

Ownership, which is the whole protocol: an RX slot/block belongs to user space while its
status has TP_STATUS_USER and is given back by writing TP_STATUS_KERNEL (0), which we do at
the *next* `recv_batch()`, when the views into it die (base.py's lifetime rule). A TX slot may
be filled while its status has none of SEND_REQUEST|SENDING|WRONG_FORMAT (the kernel may
leave timestamp bits in an AVAILABLE status); we write the frame and tp_len, then set
TP_STATUS_SEND_REQUEST, and one `send()` with no data makes the kernel transmit every
requested slot in order. The kernel sets SENDING, then AVAILABLE when the skb is freed (after
the driver is done with it, or at once on a veth, which copies). PACKET_LOSS is set so that a
frame the kernel rejects is skipped (marked AVAILABLE) rather than wedging the ring at
TP_STATUS_WRONG_FORMAT; lengths are checked here first, so that stays rare.

Memory ordering: status words and frame data are plain loads and stores into shared memory.
On RX the kernel writes a frame from softirq, at any time, then its status after a barrier;
we read status, then data, and x86-64 (the guests) never reorders loads with other loads, so
this holds without the barrier C code needs on weaker CPUs. On TX order does not matter at
all: the kernel reads TX slots only inside our own send() call.

vnet_hdr (PACKET_VNET_HDR, see wire/vnet.py) works with both rings and both versions on 6.1 (read
in its af_packet.c, and exercised by the tests): tpacket_snd parses the header in front of
the frame in a TX slot, tpacket_rcv writes it just before the frame (at tp_mac - 10), and we
hand it out as the frame's first 10 bytes. Only SOCK_RAW sockets may have it, which is all
we open. Slots and blocks are then sized for 64 KiB GSO/GRO frames, which makes V2 RX rings
wasteful (64 KiB per slot) and V3 blocks hold fewer frames; a GRO frame larger than a V3
block or V2 slot is cut and counted in `rx_truncated`. A kernel missing an option says so
in the OSError raised at construction (`abi.set_int_option`).
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..wire.vnet import HEADER_LEN as VNET_HEADER_LEN
from . import abi
from .base import DeviceStats, Frame, send_each

_U32 = struct.Struct("=I")
_unpack_u32 = _U32.unpack_from
#: Two adjacent u32 header fields written at once: (tp_len, tp_status) in tpacket3_hdr,
#: (tp_status, tp_len) in tpacket2_hdr.
_pack_pair = struct.Struct("=II").pack_into
_TX_BUSY = abi.TP_STATUS_TX_BUSY
_SEND_REQUEST = abi.TP_STATUS_SEND_REQUEST
#: block_desc: num_pkts, offset_to_first_pkt (at BLOCK_STATUS_OFFSET + 4).
_BLOCK_PKTS = struct.Struct("=II")
#: tpacket3_hdr fields we read: tp_next_offset, (skip sec/nsec), tp_snaplen, tp_len,
#: (skip tp_status), tp_mac.
_V3_PKT = struct.Struct("=I8xII4xH")
#: tpacket2_hdr fields we read: tp_status, tp_len, tp_snaplen, tp_mac.
_V2_PKT = struct.Struct("=IIIH")

#: Largest Ethernet frame a vnet_hdr socket may see or send: a 64 KiB GRO/TSO segment.
GSO_MAX_FRAME = 65535 + abi.ETH_HLEN + abi.VLAN_HLEN


@dataclass(frozen=True, slots=True)
class RingGeometry:
    """One ring's shape, as in struct tpacket_req: `block_nr` blocks of `block_size` bytes
    (a multiple of the page size), each holding `block_size // frame_size` slots. For a V3
    RX ring only the blocks matter: frames are packed into them with variable size."""

    block_size: int
    block_nr: int
    frame_size: int

    @property
    def frames_per_block(self) -> int:
        return self.block_size // self.frame_size

    @property
    def frame_nr(self) -> int:
        return self.frames_per_block * self.block_nr

    @property
    def size(self) -> int:
        """Bytes this ring takes in the mapping."""
        return self.block_size * self.block_nr

    def slot_offsets(self, base: int = 0) -> list[int]:
        """Offset of every slot: slots never straddle blocks (packet_lookup_frame)."""
        fpb = self.frames_per_block
        return [
            base + (i // fpb) * self.block_size + (i % fpb) * self.frame_size
            for i in range(self.frame_nr)
        ]


def _page_round(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


def _hdrlen(version: int) -> int:
    return abi.TPACKET3_HDRLEN if version == abi.TPACKET_V3 else abi.TPACKET2_HDRLEN


def rx_mac_offset(version: int, vnet_hdr: bool) -> int:
    """Where tpacket_rcv puts the Ethernet header in a slot (tp_mac) for SOCK_RAW: the IP
    header lands 16-byte aligned after the header, sockaddr_ll and the vnet header."""
    netoff = abi.tpacket_align(_hdrlen(version) + 16) + (VNET_HEADER_LEN if vnet_hdr else 0)
    return netoff - abi.ETH_HLEN


def tx_data_offset(version: int) -> int:
    """Where tpacket_snd reads a frame in a TX slot without PACKET_TX_HAS_OFF."""
    return _hdrlen(version) - abi.SOCKADDR_LL_LEN


def default_rx_geometry(version: int, mtu: int, vnet_hdr: bool) -> RingGeometry:
    """4 MiB or more. V3: 32 blocks of >= 128 KiB (a block must hold the largest frame, 64 KiB
    with GRO). V2: slots just big enough for one frame, 64 KiB blocks (16 MiB with vnet_hdr)."""
    largest = GSO_MAX_FRAME if vnet_hdr else mtu + abi.ETH_HLEN + abi.VLAN_HLEN
    need = rx_mac_offset(version, vnet_hdr) + largest
    if version == abi.TPACKET_V3:
        block = max(128 << 10, _page_round(need + abi.TPACKET_BLOCK_DESC.size))
        return RingGeometry(block, 32, 2048 if block % 2048 == 0 else block)
    frame = abi.tpacket_align(need)
    block = max(64 << 10, _page_round(frame))
    # With vnet_hdr a slot holds a 64 KiB GRO frame, so 4 MiB would be only 60 slots: too
    # few for a burst of MTU-sized frames (ACKs, or a peer without GSO). 16 MiB gives 240.
    nr = max(1, ((16 if vnet_hdr else 4) << 20) // block)
    return RingGeometry(block, nr, frame)


def default_tx_geometry(version: int, mtu: int, vnet_hdr: bool) -> RingGeometry:
    """At least 256 slots, each big enough for the largest frame we may send."""
    largest = VNET_HEADER_LEN + GSO_MAX_FRAME if vnet_hdr else mtu + abi.ETH_HLEN
    frame = abi.tpacket_align(tx_data_offset(version) + largest)
    block = max(64 << 10, _page_round(frame))
    per_block = block // frame
    return RingGeometry(block, max(1, -(-256 // per_block)), frame)


@dataclass(frozen=True, slots=True)
class RingLayout:
    """A configured PACKET_MMAP socket's shape: all it takes to drive its rings from the
    mapping alone (the factored stack's protocol domain holds the mapping, not the socket)."""

    name: str
    version: int  # 2 or 3
    vnet_hdr_len: int
    mtu: int
    mac: bytes
    rx: RingGeometry
    tx: RingGeometry

    @property
    def size(self) -> int:
        """Bytes to map: the kernel maps the RX ring, then the TX ring."""
        return self.rx.size + self.tx.size


def open_ring_socket(
    iface: str,
    *,
    version: int = 3,
    protocol: int = abi.ETH_P_ALL,
    rx: RingGeometry | None = None,
    tx: RingGeometry | None = None,
    retire_ms: int = 1,
    vnet_hdr: bool = False,
    qdisc_bypass: bool = False,
    sndbuf: int = 8 << 20,
) -> tuple[socket.socket, RingLayout]:
    """A non-blocking AF_PACKET socket with RX and TX rings, bound to `iface`; the caller maps
    `layout.size` bytes of it, shared, read and write.

    Set up in the order the kernel demands: options, rings, then bind (protocol 0 until then,
    so nothing is received before the rings exist). `version` is 2 or 3 (TPACKET_V2/V3);
    geometries default from the MTU and `vnet_hdr`. `retire_ms` is the V3 block retire timeout.
    The socket buffer matters only for TX here (it bounds frames in flight); the RX ring
    replaces the receive buffer.
    """
    if version not in (2, 3):
        raise ValueError(f"TPACKET version must be 2 or 3, not {version}")
    tpv = abi.TPACKET_V3 if version == 3 else abi.TPACKET_V2
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        mtu = abi.link_mtu(sock, iface)
        layout = RingLayout(
            name=iface,
            version=version,
            vnet_hdr_len=VNET_HEADER_LEN if vnet_hdr else 0,
            mtu=mtu,
            mac=abi.link_mac(sock, iface),
            rx=rx or default_rx_geometry(tpv, mtu, vnet_hdr),
            tx=tx or default_tx_geometry(tpv, mtu, vnet_hdr),
        )
        abi.force_buffers(sock, None, sndbuf)
        abi.set_int_option(sock, abi.PACKET_VERSION, tpv)
        abi.set_int_option(sock, abi.PACKET_LOSS, 1)
        abi.set_int_option(sock, abi.PACKET_IGNORE_OUTGOING, 1)
        if vnet_hdr:
            abi.set_int_option(sock, abi.PACKET_VNET_HDR, 1)
        if qdisc_bypass:
            abi.set_int_option(sock, abi.PACKET_QDISC_BYPASS, 1)
        _set_ring(sock, tpv, abi.PACKET_RX_RING, layout.rx, retire_ms)
        _set_ring(sock, tpv, abi.PACKET_TX_RING, layout.tx, 0)
        sock.bind((iface, protocol))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, layout


def _set_ring(sock: socket.socket, tpv: int, option: int, geo: RingGeometry, tov: int) -> None:
    fields = (geo.block_size, geo.block_nr, geo.frame_size, geo.frame_nr)
    if tpv == abi.TPACKET_V3:
        # tp_retire_blk_tov, tp_sizeof_priv, tp_feature_req_word: all must be 0 for TX.
        req = abi.TPACKET_REQ3.pack(*fields, tov, 0, 0)
    else:
        req = abi.TPACKET_REQ.pack(*fields)
    try:
        sock.setsockopt(abi.SOL_PACKET, option, req)
    except OSError as exc:
        which = "RX" if option == abi.PACKET_RX_RING else "TX"
        raise OSError(exc.errno, f"{which} ring {geo} refused: {exc.strerror}") from exc


class RingDevice:
    """`base.Device` over PACKET_MMAP RX and TX rings on one AF_PACKET socket."""

    def __init__(self, iface: str, **options: Any) -> None:
        """The socket from `open_ring_socket(iface, **options)`, its rings mapped here."""
        sock, layout = open_ring_socket(iface, **options)
        try:
            mm = mmap.mmap(
                sock.fileno(), layout.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._mmap: mmap.mmap | None = mm
        self._adopt(layout, memoryview(mm))

    def _adopt(self, layout: RingLayout, view: memoryview) -> None:
        """Take the rings of `layout`, mapped at `view`: cursors at the start, counters zero."""
        self.name = layout.name
        self.version = layout.version
        self.vnet_hdr_len = layout.vnet_hdr_len
        self.mtu = layout.mtu
        self.mac = layout.mac
        self.rx_geometry = layout.rx
        self.tx_geometry = layout.tx
        self._tpv = abi.TPACKET_V3 if layout.version == 3 else abi.TPACKET_V2
        self._stats = DeviceStats()
        self._closed = False
        self._handed_out: list[memoryview] = []
        self._rx_done: list[int] = []  # status-word offsets to give back to the kernel
        self._view = view
        # RX cursor. V3: block index, frames left in it, offset of the next frame header.
        self._rx_blocks = [
            i * self.rx_geometry.block_size for i in range(self.rx_geometry.block_nr)
        ]
        self._rx_block = 0
        self._rx_left = 0
        self._rx_off = 0
        # V2: slot index.
        self._rx_slots = self.rx_geometry.slot_offsets() if layout.version == 2 else []
        self._rx_head = 0
        # TX: head = next slot to fill; oldest = first slot requested but not yet taken.
        self._tx_slots = self.tx_geometry.slot_offsets(self.rx_geometry.size)
        self._tx_head = 0
        self._tx_oldest = 0
        self._tx_pending = 0
        self._tx_nr = len(self._tx_slots)
        # tp_status position: tpacket2_hdr starts with it, tpacket3_hdr has it at 20, just
        # after tp_len (at 16); frame data starts after the aligned header.
        self._tx_status = 20 if layout.version == 3 else 0
        self._tx_len_first = layout.version == 3
        data = tx_data_offset(self._tpv)
        self._tx_table = [(slot + self._tx_status, slot + data) for slot in self._tx_slots]
        capacity = self.tx_geometry.frame_size - data
        if layout.vnet_hdr_len:
            self.max_tx_frame = capacity  # vnet header included; GSO frames exceed the MTU
        else:
            self.max_tx_frame = min(capacity, self.mtu + abi.ETH_HLEN)

    # --- receive ---------------------------------------------------------------------------

    @property
    def stats(self) -> DeviceStats:
        """Counters, with the kernel's drop and ring-full counts (reset on read) folded in."""
        if not self._closed:
            self._read_kernel_drops()
        return self._stats

    def _read_kernel_drops(self) -> None:
        drops, freezes = abi.read_drops(self._sock)
        self._stats.rx_dropped += drops
        self._stats.rx_ring_full += freezes

    def fileno(self) -> int:
        """Readable when a V2 slot / V3 block is ours; writable when the TX head slot is free."""
        return self._sock.fileno()

    def recv_batch(self, max_frames: int = 64) -> list[memoryview]:
        """Up to `max_frames` views into the RX ring; gives back what the last call handed out."""
        self._release()
        if self.version == 3:
            return self._recv_v3(max_frames)
        return self._recv_v2(max_frames)

    def _recv_v3(self, max_frames: int) -> list[memoryview]:
        view = self._view
        out = self._handed_out
        unpack_u32 = _U32.unpack_from
        unpack_pkt = _V3_PKT.unpack_from
        vlen = self.vnet_hdr_len
        left = self._rx_left
        off = self._rx_off
        count = nbytes = truncated = 0
        # Blocks finished now go back to the kernel only at the next call: never come back
        # round to a block this call already finished (it still reads TP_STATUS_USER).
        blocks_left = len(self._rx_blocks) - (1 if left else 0)
        while count < max_frames:
            if not left:
                if blocks_left <= 0:
                    break
                blocks_left -= 1
                block = self._rx_blocks[self._rx_block]
                if not unpack_u32(view, block + abi.BLOCK_STATUS_OFFSET)[0] & abi.TP_STATUS_USER:
                    break
                left, first = _BLOCK_PKTS.unpack_from(view, block + abi.BLOCK_STATUS_OFFSET + 4)
                off = block + first
                if not left:  # retired empty: nothing to hold, give it straight back
                    self._finish_block()
                    continue
            next_off, snaplen, length, mac = unpack_pkt(view, off)
            start = off + mac
            if snaplen < length:
                truncated += 1
            else:
                out.append(view[start - vlen : start + snaplen])
                nbytes += snaplen
                count += 1
            left -= 1
            if left:
                off += next_off
            else:
                self._finish_block()
        self._rx_left = left
        self._rx_off = off
        return self._account_rx(count, nbytes, truncated)

    def _finish_block(self) -> None:
        """The current block is read to the end: hold it until the next call, move on."""
        self._rx_done.append(self._rx_blocks[self._rx_block] + abi.BLOCK_STATUS_OFFSET)
        self._rx_block += 1
        if self._rx_block == len(self._rx_blocks):
            self._rx_block = 0

    def _recv_v2(self, max_frames: int) -> list[memoryview]:
        view = self._view
        out = self._handed_out
        done = self._rx_done
        slots = self._rx_slots
        unpack = _V2_PKT.unpack_from
        vlen = self.vnet_hdr_len
        head = self._rx_head
        count = nbytes = truncated = 0
        # Slots read now go back to the kernel only at the next call: one call must not lap
        # the ring, or it would hand out a slot it already handed out (still TP_STATUS_USER).
        visits = min(max_frames, len(slots))
        while visits:
            visits -= 1
            off = slots[head]
            status, length, snaplen, mac = unpack(view, off)
            if not status & abi.TP_STATUS_USER:
                break
            done.append(off)
            start = off + mac
            if snaplen < length:
                truncated += 1
            else:
                out.append(view[start - vlen : start + snaplen])
                nbytes += snaplen
                count += 1
            head += 1
            if head == len(slots):
                head = 0
        self._rx_head = head
        return self._account_rx(count, nbytes, truncated)

    def _account_rx(self, count: int, nbytes: int, truncated: int) -> list[memoryview]:
        stats = self._stats
        if truncated:
            stats.rx_truncated += truncated
        if count:
            stats.rx_frames += count
            stats.rx_bytes += nbytes
            stats.rx_batches += 1
        return list(self._handed_out)

    def _release(self) -> None:
        """End the lifetime of the last batch: release its views, return its slots/blocks."""
        for view in self._handed_out:
            with contextlib.suppress(BufferError):  # exported further: the slot is reused anyway
                view.release()
        self._handed_out.clear()
        if self._rx_done:
            pack = _U32.pack_into
            view = self._view
            for status_off in self._rx_done:
                pack(view, status_off, abi.TP_STATUS_KERNEL)
            self._rx_done.clear()

    def owns(self, frame: memoryview) -> bool:
        """True if `frame` is a view into this device's ring (i.e. was not copied)."""
        return self._mmap is not None and frame.obj is self._mmap

    @property
    def mapped(self) -> bool:
        """True while the ring memory is mapped into this process."""
        return self._mmap is not None and not self._mmap.closed

    # --- transmit --------------------------------------------------------------------------

    @property
    def tx_pending(self) -> int:
        """Frames requested but not yet taken by the kernel: poll for writability and
        `flush()` again while this is non-zero."""
        return self._tx_pending

    def send(self, frame: Frame, header: bytes = b"") -> bool:
        """Copy `header` + `frame` into the next TX slot and request it (sent at `flush()`).

        `header` is for a caller whose frames have no headroom for the virtio_net_hdr: the
        two pieces land side by side in the slot, so joining them costs no extra copy.
        False when the slot is still in flight (ring full); ValueError when the frame can
        never fit (`max_tx_frame`: slot capacity, and the MTU unless vnet_hdr is on).
        """
        # The hot path of a sender: locals and precomputed offsets, one struct call for the
        # header. Write order inside the slot does not matter: the kernel reads TX slots only
        # inside our own send() syscall (tpacket_snd runs in the calling thread).
        h = len(header)
        n = len(frame) + h
        if n > self.max_tx_frame:
            self._stats.tx_errors += 1
            raise ValueError(f"{self.name}: {n}-byte frame exceeds {self.max_tx_frame} bytes")
        view = self._view
        head = self._tx_head
        status_at, data_at = self._tx_table[head]
        if _unpack_u32(view, status_at)[0] & _TX_BUSY and not self._make_room(status_at):
            return False
        if self._tx_pending == self._tx_nr:
            # The head slot is the oldest requested one, free again: taken by a transmit
            # outside `flush` (the factored stack's driver domain). Count it before reusing it.
            self._reap_taken()
        if h:
            view[data_at : data_at + h] = header
        view[data_at + h : data_at + n] = frame
        if self._tx_len_first:  # tpacket3_hdr: tp_len, tp_status at 16, 20
            _pack_pair(view, status_at - 4, n, _SEND_REQUEST)
        else:  # tpacket2_hdr: tp_status, tp_len at 0, 4
            _pack_pair(view, status_at, _SEND_REQUEST, n)
        head += 1
        self._tx_head = 0 if head == self._tx_nr else head
        self._tx_pending += 1
        stats = self._stats
        stats.tx_frames += 1
        stats.tx_bytes += n - self.vnet_hdr_len
        return True

    def _make_room(self, status_at: int) -> bool:
        """The head slot is busy: if it holds one of our unflushed frames (the ring is full of
        them), flush and look again. False (counted) if it is still in flight."""
        if _unpack_u32(self._view, status_at)[0] & abi.TP_STATUS_SEND_REQUEST:
            self.flush()
            if not _unpack_u32(self._view, status_at)[0] & _TX_BUSY:
                return True
        self._stats.tx_full += 1
        return False

    def send_batch(self, frames: Iterable[Frame], headers: Sequence[bytes] | None = None) -> int:
        """Fill slots for `frames` in order, then one `send()` syscall for all of them.

        The loop is `send()` inlined for free slots and frames that fit (a third cheaper per
        frame); at the first frame that is not that simple, the rest go through `send()`.
        `headers[i]`, if given, goes in front of the i-th frame (see `send`).
        """
        if headers is not None:
            # Few frames come with headers (TSO makes them large): the plain `send()` path
            # costs nothing worth inlining.
            queued = send_each(self.send, frames, headers)
            self.flush()
            return queued
        view = self._view
        table = self._tx_table
        nr = self._tx_nr
        limit = self.max_tx_frame
        len_first = self._tx_len_first
        head = self._tx_head
        fast = nbytes = 0
        room = nr - self._tx_pending  # slots before one not yet counted as taken (see `send`)
        rest = iter(frames)
        hard: list[Frame] = []
        for frame in rest:
            n = len(frame)
            status_at, data_at = table[head]
            if n > limit or fast == room or _unpack_u32(view, status_at)[0] & _TX_BUSY:
                hard.append(frame)
                break
            view[data_at : data_at + n] = frame
            if len_first:
                _pack_pair(view, status_at - 4, n, _SEND_REQUEST)
            else:
                _pack_pair(view, status_at, _SEND_REQUEST, n)
            head += 1
            if head == nr:
                head = 0
            fast += 1
            nbytes += n
        self._tx_head = head
        self._tx_pending += fast
        stats = self._stats
        stats.tx_frames += fast
        stats.tx_bytes += nbytes - fast * self.vnet_hdr_len
        queued = fast
        if hard:
            for frame in itertools.chain(hard, rest):
                if not self.send(frame):
                    break
                queued += 1
        self.flush()
        return queued

    def flush(self) -> None:
        """Ask the kernel to transmit every requested slot it has not taken yet.

        What it took is read back from the slots' status words, never assumed: a `send()`
        can stop part-way and still succeed (tpacket_snd returns what it sent when the socket
        buffer fills mid-ring), and the slots after that stay requested. `tx_pending` then
        stays non-zero and the caller flushes again. The slots are read before the request
        too, so that frames a transmit outside this call took (the factored stack's driver
        domain) are not requested twice.
        """
        if not self._tx_pending or not self._reap_taken():
            return
        self._request_transmit()
        self._reap_taken()

    def _request_transmit(self) -> None:
        """One `send()` syscall, never blocking: the kernel transmits the requested slots from
        its cursor on."""
        try:
            self._sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as exc:
            # Socket buffer or driver queue full: the kernel leaves the frame it could not
            # send (and those after it) requested; a later flush() sends them.
            if not abi.is_no_room(exc):
                raise

    def _reap_taken(self) -> int:
        """Count the pending frames the kernel has taken (its cursor moved past every slot no
        longer requested); return how many are still pending."""
        view = self._view
        slots = self._tx_slots
        i = self._tx_oldest
        taken = 0
        while taken < self._tx_pending:
            status = _U32.unpack_from(view, slots[i] + self._tx_status)[0]
            if status & abi.TP_STATUS_SEND_REQUEST:
                break
            taken += 1
            i += 1
            if i == len(slots):
                i = 0
        self._tx_oldest = i
        self._tx_pending -= taken
        if taken:
            self._stats.tx_batches += 1
        return self._tx_pending

    # --- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the rings and close the socket.

        If the caller still holds views derived from received frames, the mapping cannot be
        unmapped yet (Python refuses to close an mmap with live exports); then the socket is
        unbound so that the kernel stops writing, and the memory goes when the views do.
        """
        if self._closed:
            return
        self._release()
        self._read_kernel_drops()  # the last chance: the counter dies with the socket
        self._closed = True
        self._view.release()
        mm = self._mmap
        self._mmap = None
        assert mm is not None
        try:
            mm.close()
        except BufferError:
            with contextlib.suppress(OSError):
                self._sock.bind((self.name, 0))  # protocol 0: no more frames into the ring
        self._sock.close()

    def __enter__(self) -> RingDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

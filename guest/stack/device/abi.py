"""The Linux AF_PACKET ABI as plain Python: constants, struct layouts, small socket helpers.

Python 3.11's `socket` module exposes AF_PACKET but none of the SOL_PACKET options, so the
numbers are spelled out here with their names and values from the kernel's UAPI headers
(`linux/if_packet.h`, `linux/if_ether.h`, `asm-generic/socket.h`, `linux/sockios.h`) as shipped
with Debian 12's 6.1 kernel. They are ABI: they never change meaning once released.

Struct layouts are native-endian (`=`) with the kernel's natural alignment written out as
explicit padding, and are checked against the C sizes in the tests.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from typing import Final

# --- linux/if_ether.h -------------------------------------------------------------------
ETH_P_ALL: Final = 0x0003  # every protocol (makes the socket a tap: it also sees outgoing)
ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
#: IEEE 802 "local experimental ethertype 1": nothing on a host reacts to it, so test and
#: benchmark traffic uses it.
ETH_P_EXPERIMENTAL: Final = 0x88B5
ETH_HLEN: Final = 14
VLAN_HLEN: Final = 4

# --- asm-generic/socket.h ---------------------------------------------------------------
SO_SNDBUFFORCE: Final = 32  # like SO_SNDBUF but ignores wmem_max; needs CAP_NET_ADMIN
SO_RCVBUFFORCE: Final = 33  # like SO_RCVBUF but ignores rmem_max; needs CAP_NET_ADMIN

# --- linux/socket.h ---------------------------------------------------------------------
SOL_PACKET: Final = 263

# --- linux/if_packet.h: socket options (level SOL_PACKET) -------------------------------
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6  # struct tpacket_stats{,_v3}; reading resets the counters
PACKET_VERSION: Final = 10
PACKET_TX_RING: Final = 13
PACKET_LOSS: Final = 14  # TX ring: skip malformed frames instead of stopping at them
PACKET_VNET_HDR: Final = 15  # virtio_net_hdr in front of every frame (SOCK_RAW only)
PACKET_QDISC_BYPASS: Final = 20  # hand frames straight to the driver (no qdisc)
PACKET_IGNORE_OUTGOING: Final = 23  # since 4.20: do not deliver frames this host sends

# --- linux/if_packet.h: enum tpacket_versions -------------------------------------------
TPACKET_V2: Final = 1
TPACKET_V3: Final = 2

# --- linux/if_packet.h: frame / block status words ---------------------------------------
# RX ring: who owns the slot (V2) or block (V3, block_status) ...
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1 << 0
# ... and what the kernel says about the frame (RX tp_status flags).
TP_STATUS_COPY: Final = 1 << 1
TP_STATUS_LOSING: Final = 1 << 2  # V2: the kernel dropped frames since stats were last read
TP_STATUS_CSUMNOTREADY: Final = 1 << 3  # CHECKSUM_PARTIAL: checksum field holds only a seed
TP_STATUS_VLAN_VALID: Final = 1 << 4
TP_STATUS_BLK_TMO: Final = 1 << 5  # V3 block_status: retired by the timer, not because full
TP_STATUS_CSUM_VALID: Final = 1 << 7  # the NIC or an earlier layer verified the checksum
# TX ring.
TP_STATUS_AVAILABLE: Final = 0  # user space may fill the slot
TP_STATUS_SEND_REQUEST: Final = 1 << 0  # filled by user space, waiting for send()
TP_STATUS_SENDING: Final = 1 << 1  # taken by the kernel, skb still alive
TP_STATUS_WRONG_FORMAT: Final = 1 << 2  # rejected (only without PACKET_LOSS)
#: A TX slot is free when none of these bits is set; the kernel may OR timestamp bits
#: (TP_STATUS_TS_*, bits 29-31) into an AVAILABLE status, so "== 0" would be wrong.
TP_STATUS_TX_BUSY: Final = TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING | TP_STATUS_WRONG_FORMAT

# --- linux/if_packet.h: alignment and header sizes ----------------------------------------
TPACKET_ALIGNMENT: Final = 16
SOCKADDR_LL_LEN: Final = 20  # sizeof(struct sockaddr_ll)


def tpacket_align(x: int) -> int:
    """TPACKET_ALIGN(x): round up to TPACKET_ALIGNMENT (16)."""
    return (x + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1)


#: struct tpacket2_hdr: tp_status, tp_len, tp_snaplen (u32), tp_mac, tp_net (u16), tp_sec,
#: tp_nsec (u32), tp_vlan_tci, tp_vlan_tpid (u16), tp_padding[4]. 32 bytes.
TPACKET2_HDR: Final = struct.Struct("=IIIHHIIHH4x")
#: struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status (u32),
#: tp_mac, tp_net (u16), hv1 {tp_rxhash, tp_vlan_tci (u32), tp_vlan_tpid, pad (u16)},
#: tp_padding[8]. 48 bytes.
TPACKET3_HDR: Final = struct.Struct("=IIIIIIHHIIHH8x")
#: TPACKET{2,3}_HDRLEN: aligned header + sockaddr_ll; the kernel's minimum frame size.
TPACKET2_HDRLEN: Final = tpacket_align(TPACKET2_HDR.size) + SOCKADDR_LL_LEN  # 52
TPACKET3_HDRLEN: Final = tpacket_align(TPACKET3_HDR.size) + SOCKADDR_LL_LEN  # 68
#: struct tpacket_block_desc (V3 RX block header): version, offset_to_priv, then
#: tpacket_hdr_v1 {block_status, num_pkts, offset_to_first_pkt, blk_len (u32), seq_num (u64),
#: ts_first_pkt, ts_last_pkt (2 x u32 each)}. 48 bytes.
TPACKET_BLOCK_DESC: Final = struct.Struct("=IIIIIIQIIII")
BLOCK_STATUS_OFFSET: Final = 8
#: struct tpacket_req (V1/V2): tp_block_size, tp_block_nr, tp_frame_size, tp_frame_nr.
TPACKET_REQ: Final = struct.Struct("=IIII")
#: struct tpacket_req3: the above + tp_retire_blk_tov (ms), tp_sizeof_priv, tp_feature_req_word.
TPACKET_REQ3: Final = struct.Struct("=IIIIIII")
#: struct tpacket_stats: tp_packets, tp_drops; tpacket_stats_v3 adds tp_freeze_q_cnt.
TPACKET_STATS_V3: Final = struct.Struct("=III")

# --- linux/sockios.h + struct ifreq --------------------------------------------------------
SIOCGIFMTU: Final = 0x8921
SIOCGIFHWADDR: Final = 0x8927
IFNAMSIZ: Final = 16
_IFREQ_LEN: Final = 40  # sizeof(struct ifreq) on 64-bit Linux

_INT = struct.Struct("=i")

#: Names for error messages, with the kernel release that added the option.
_OPTION_NAMES = {
    PACKET_VERSION: "PACKET_VERSION",
    PACKET_LOSS: "PACKET_LOSS",
    PACKET_VNET_HDR: "PACKET_VNET_HDR",
    PACKET_QDISC_BYPASS: "PACKET_QDISC_BYPASS (Linux 3.14+)",
    PACKET_IGNORE_OUTGOING: "PACKET_IGNORE_OUTGOING (Linux 4.20+)",
}


def set_int_option(sock: socket.socket, option: int, value: int, level: int = SOL_PACKET) -> None:
    """setsockopt with a C int, which is what every option used here takes; a refusal names
    the option (ENOPROTOOPT alone does not say which of several is missing)."""
    try:
        sock.setsockopt(level, option, _INT.pack(value))
    except OSError as exc:
        if level != SOL_PACKET or exc.errno in (errno.EPERM, errno.EACCES):
            raise
        name = _OPTION_NAMES.get(option, f"SOL_PACKET option {option}")
        raise OSError(exc.errno, f"{name}={value} refused: {exc.strerror}") from exc


def force_buffers(sock: socket.socket, rcvbuf: int | None, sndbuf: int | None) -> None:
    """Set socket buffer sizes past net.core.{r,w}mem_max where allowed.

    A packet socket whose buffer is full drops frames silently, with the CPU idle, so
    receivers want far more than the 208 KiB default. The FORCE variants need
    CAP_NET_ADMIN; without it, fall back to the capped plain options.
    """
    for size, force, plain in (
        (rcvbuf, SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (sndbuf, SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        if size is None:
            continue
        try:
            set_int_option(sock, force, size, socket.SOL_SOCKET)
        except PermissionError:
            set_int_option(sock, plain, size, socket.SOL_SOCKET)


def _ifreq(sock: socket.socket, request: int, iface: str) -> bytes:
    name = iface.encode()
    if len(name) >= IFNAMSIZ:
        raise ValueError(f"interface name too long: {iface!r}")
    buf = name.ljust(_IFREQ_LEN, b"\0")
    return fcntl.ioctl(sock.fileno(), request, buf)


def link_mtu(sock: socket.socket, iface: str) -> int:
    """The interface's MTU (ioctl, so it works in any namespace without /sys)."""
    return _INT.unpack_from(_ifreq(sock, SIOCGIFMTU, iface), IFNAMSIZ)[0]


def link_mac(sock: socket.socket, iface: str) -> bytes:
    """The interface's 6-byte hardware address (ifr_hwaddr.sa_data)."""
    return _ifreq(sock, SIOCGIFHWADDR, iface)[IFNAMSIZ + 2 : IFNAMSIZ + 8]


def read_drops(sock: socket.socket) -> tuple[int, int]:
    """(tp_drops, tp_freeze_q_cnt) since the last call: the kernel resets them on read.

    For V1/V2 and plain sockets the kernel returns only 8 bytes (no freeze count).
    """
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
    raw = raw.ljust(TPACKET_STATS_V3.size, b"\0")
    _, drops, freezes = TPACKET_STATS_V3.unpack(raw)
    return drops, freezes


def is_no_room(exc: OSError) -> bool:
    """EAGAIN/ENOBUFS from send(): the socket buffer or the driver queue is full, a transient
    condition the caller may retry, unlike EMSGSIZE or EINVAL."""
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)

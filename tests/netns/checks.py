"""Checks that must run inside a namespace: `python3 -m tests.netns.checks NAME ARGS-JSON`.

Each check opens devices in the namespace it runs in, prints "ready" once its receive side is
bound (the test then starts a sender in the other namespace), and ends with one JSON line of
findings that the test asserts on. Checks report rather than assert, so that a failure shows
every finding at once, not the first.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from guest.stack.device import abi
from guest.stack.device.base import Device
from guest.stack.device.packet import PacketDevice
from guest.stack.device.ring import RingDevice, RingGeometry
from guest.stack.device.setup import FEATURES, read_features, receive_checksums_on, take_over
from guest.stack.wire.addr import ipv4
from guest.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, EthernetRepr
from guest.stack.wire.frame import emit_tcp_frame, tcp_payload_offset
from guest.stack.wire.ipv4 import Ipv4Packet, Ipv4Repr
from guest.stack.wire.tcp import TcpFlags, TcpPacket, TcpRepr
from guest.stack.wire.vnet import VnetHdr, partial_csum_seed, tcp4_tso

SRC_IP = ipv4("198.18.0.1")
DST_IP = ipv4("198.18.0.2")


def _ready() -> None:
    print("ready", flush=True)


def _wait_frames(dev: Device, want: int, timeout: float = 5.0) -> list[bytes]:
    """Copies of the next `want` frames (fewer on timeout)."""
    poller = select.poll()
    poller.register(dev.fileno(), select.POLLIN)
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = dev.recv_batch(want - len(got))
        if not batch:
            poller.poll(20)
        got.extend(bytes(frame) for frame in batch)
    return got


def _first_batch(dev: Device, timeout: float = 5.0) -> list[memoryview]:
    poller = select.poll()
    poller.register(dev.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = dev.recv_batch(16)
        if batch:
            return batch
        poller.poll(20)
    return []


def _socket_mapped(inode: int) -> bool:
    """Is a mapping of socket `inode` in this process's address space?"""
    with open("/proc/self/maps") as maps:
        return any(f"socket:[{inode}]" in line for line in maps)


def _released(view: memoryview) -> bool:
    try:
        view[0]
    except ValueError:
        return True
    return False


def ring_views(iface: str, version: int) -> dict[str, Any]:
    """Receive through a ring: views point into the mapping, die at the next recv_batch,
    and close() unmaps the ring and closes the socket."""
    dev = RingDevice(iface, version=version, protocol=abi.ETH_P_EXPERIMENTAL)
    inode = os.fstat(dev.fileno()).st_ino
    found: dict[str, Any] = {
        "mapped_at_start": _socket_mapped(inode),
        "is_device": isinstance(dev, Device),
    }
    _ready()
    batch = _first_batch(dev)
    found["got"] = len(batch)
    mm = dev._mmap
    found["all_in_mmap"] = bool(batch) and all(f.obj is mm and dev.owns(f) for f in batch)
    found["writable_views"] = bool(batch) and not any(f.readonly for f in batch)
    found["contents"] = [bytes(f[:18]).hex() for f in batch[:2]]
    sub = batch[0][:14] if batch else memoryview(b"")
    time.sleep(0.05)
    later = dev.recv_batch(16)
    found["old_views_released"] = bool(batch) and all(_released(f) for f in batch)
    found["sub_slice_still_readable"] = len(bytes(sub)) == 14
    del sub
    dev.close()
    found["new_views_released_by_close"] = all(_released(f) for f in later)
    found["mapped_after_close"] = _socket_mapped(inode)
    found["mapped_property"] = dev.mapped
    found["mmap_closed"] = mm is not None and mm.closed
    dev.close()  # idempotent
    return found


def ring_overflow(iface: str, version: int) -> dict[str, Any]:
    """A tiny ring, left to overflow, then drained with batches larger than the ring: each
    frame must come out once (a batch must not lap the ring and hand out a slot again)."""
    geo = RingGeometry(4096, 4, 2048) if version == 2 else RingGeometry(4096, 3, 2048)
    dev = RingDevice(iface, version=version, protocol=abi.ETH_P_EXPERIMENTAL, rx=geo)
    _ready()
    time.sleep(1.0)  # the sender floods meanwhile: the ring fills and the kernel drops
    seqs: list[int] = []
    batches = 0
    for _ in range(20):
        batch = dev.recv_batch(256)
        batches += bool(batch)
        seqs += [int.from_bytes(f[14:18], "big") for f in batch]
        time.sleep(0.01)
    stats = dev.stats
    dev.close()
    return {
        "got": len(seqs),
        "distinct": len(set(seqs)),
        "batches": batches,
        "slots": geo.frame_nr,
        "dropped": stats.rx_dropped,
    }


def ring_close_with_live_slice(iface: str) -> dict[str, Any]:
    """close() while the caller still holds a slice of a frame: no error, and the mapping
    goes away when the slice does."""
    dev = RingDevice(iface, protocol=abi.ETH_P_EXPERIMENTAL)
    inode = os.fstat(dev.fileno()).st_ino
    _ready()
    batch = _first_batch(dev)
    kept = batch[0][:20] if batch else None
    found: dict[str, Any] = {"got": len(batch)}
    try:
        dev.close()
        found["close_raised"] = None
    except Exception as exc:  # report, do not crash the worker
        found["close_raised"] = repr(exc)
    found["mapped_while_slice_alive"] = _socket_mapped(inode)
    found["slice_readable"] = kept is not None and len(bytes(kept)) == 20
    del kept, batch
    gc.collect()
    found["mapped_after_slice_dropped"] = _socket_mapped(inode)
    return found


def oversize_tx(iface: str) -> dict[str, Any]:
    """Frames that can never be sent raise ValueError on both devices; the rest still work."""
    found: dict[str, Any] = {}
    frame = b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5"
    with RingDevice(iface, protocol=abi.ETH_P_EXPERIMENTAL) as ring:
        found["ring_max_tx_frame"] = ring.max_tx_frame
        found["mtu"] = ring.mtu
        try:
            ring.send(frame.ljust(ring.max_tx_frame + 1, b"\0"))
            found["ring_oversize"] = "accepted"
        except ValueError:
            found["ring_oversize"] = "ValueError"
        found["ring_ok_after"] = ring.send(frame.ljust(ring.max_tx_frame, b"\0"))
        ring.flush()
        found["ring_stats"] = ring.stats.as_dict()
    with PacketDevice(iface, protocol=abi.ETH_P_EXPERIMENTAL) as plain:
        try:
            plain.send(frame.ljust(plain.mtu + abi.ETH_HLEN + 1, b"\0"))
            found["packet_oversize"] = "accepted"
        except ValueError:
            found["packet_oversize"] = "ValueError"
        found["packet_is_device"] = isinstance(plain, Device)
        found["packet_ok_after"] = plain.send(frame.ljust(plain.mtu + abi.ETH_HLEN, b"\0"))
        found["packet_stats"] = plain.stats.as_dict()
    return found


def _open(kind: str, iface: str, vnet: bool, protocol: int) -> Device:
    if kind == "packet":
        return PacketDevice(iface, protocol=protocol, vnet_hdr=vnet)
    return RingDevice(iface, version=int(kind[-1]), protocol=protocol, vnet_hdr=vnet)


def tso_frame(src_mac: bytes, dst_mac: bytes, mss: int, payload: bytes) -> bytes:
    """vnet header + one IPv4/TCP super-segment carrying `payload`, checksum left to offload."""
    tcp = TcpRepr(40000, 5001, 1000, 1, TcpFlags.ACK | TcpFlags.PSH, 512)
    ip = Ipv4Repr(SRC_IP, DST_IP, 0, 0, ident=7, dont_frag=True)
    eth = EthernetRepr(src_mac, dst_mac, ETHERTYPE_IPV4)
    start = tcp_payload_offset(tcp)
    buf = bytearray(start + len(payload))
    buf[start:] = payload
    length = emit_tcp_frame(buf, eth, ip, tcp, len(payload))
    tcp_len = tcp.header_len() + len(payload)
    buf[14 + 20 + 16 : 14 + 20 + 18] = partial_csum_seed(SRC_IP, DST_IP, 6, tcp_len).to_bytes(
        2, "big"
    )
    hdr = tcp4_tso(14, 20, tcp.header_len(), mss)
    hdr.check(length)
    return hdr.to_bytes() + bytes(buf[:length])


def tso_send(iface: str, kind: str, dst: str, mss: int, payload_len: int) -> dict[str, Any]:
    """Send one TSO super-segment with a vnet_hdr device; report what send() said."""
    dev = _open(kind, iface, True, abi.ETH_P_IP)
    payload = bytes(i * 7 % 251 for i in range(payload_len))
    frame = tso_frame(dev.mac, bytes.fromhex(dst.replace(":", "")), mss, payload)
    accepted = dev.send(frame)
    dev.flush()
    time.sleep(0.1)
    if isinstance(dev, RingDevice):
        dev.flush()
    stats = dev.stats.as_dict()
    dev.close()
    return {"accepted": accepted, "stats": stats, "payload_sha": _digest(payload)}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ip_recv(iface: str, kind: str, vnet: bool, count: int, timeout: float = 5.0) -> dict[str, Any]:
    """Receive IPv4/TCP frames and describe each: vnet header, lengths, checksum validity."""
    dev = _open(kind, iface, vnet, abi.ETH_P_IP)
    _ready()
    frames = _wait_frames(dev, count, timeout)
    skip = dev.vnet_hdr_len
    out = []
    payload = b""
    for raw in frames:
        info: dict[str, Any] = {"len": len(raw) - skip}
        if skip:
            hdr = VnetHdr.parse(raw)
            info["flags"] = hdr.flags
            info["gso_type"] = hdr.gso_type
            info["gso_size"] = hdr.gso_size
            info["csum_start"] = hdr.csum_start
            info["csum_offset"] = hdr.csum_offset
        eth = EthernetFrame.new_checked(raw[skip:])
        packet = Ipv4Packet(eth.payload)
        ip_ok = packet.verify_checksum()
        ip = Ipv4Repr.parse(packet, verify_checksum=False)
        info["ip_csum_ok"] = ip_ok
        info["ip_total_len"] = 20 + ip.payload_len
        tcp = TcpRepr.parse(packet.payload, ip.src_addr, ip.dst_addr, verify_checksum=False)
        info["tcp_csum_field"] = TcpPacket(packet.payload).checksum
        info["tcp_len"] = ip.payload_len
        info["tcp_csum_ok"] = TcpPacket(packet.payload).verify_checksum(ip.src_addr, ip.dst_addr)
        info["seq"] = tcp.seq
        info["payload_len"] = len(tcp.payload)
        payload += bytes(tcp.payload)
        out.append(info)
    stats = dev.stats.as_dict()
    dev.close()
    return {"frames": out, "payload_sha": _digest(payload), "stats": stats}


def _link_state(iface: str) -> dict[str, Any]:
    def sysctl(path: str) -> str:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()

    return {
        "addrs": subprocess_out(["ip", "-4", "-o", "addr", "show", "dev", iface]),
        "routes": subprocess_out(["ip", "-4", "route", "show", "dev", iface]),
        "arp_ignore": sysctl(f"net/ipv4/conf/{iface}/arp_ignore"),
        "disable_ipv6": sysctl(f"net/ipv6/conf/{iface}/disable_ipv6"),
        "features": {name: on for name, (on, _) in read_features(iface).items()},
    }


def subprocess_out(argv: list[str]) -> list[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return sorted(line.split(" proto ")[0].strip() for line in done.stdout.splitlines())


def take_over_roundtrip(iface: str) -> dict[str, Any]:
    """Give `iface` an address, a route and IPv6; take it over both ways; restore each time."""
    subprocess.run(["ip", "addr", "add", "198.18.7.1/24", "dev", iface], check=True)
    subprocess.run(
        ["ip", "route", "add", "198.19.7.0/24", "via", "198.18.7.2", "dev", iface], check=True
    )
    with open(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "w") as f:
        f.write("0")
    found: dict[str, Any] = {"before": _link_state(iface)}
    for offloads in (False, True):
        record = take_over(iface, offloads)
        found[f"taken_{offloads}"] = _link_state(iface)
        found[f"unchanged_{offloads}"] = record.unchanged
        record.restore()
        record.restore()  # idempotent
        found[f"restored_{offloads}"] = _link_state(iface)
    return found


def receive_checksums(iface: str) -> dict[str, Any]:
    """`receive_checksums_on` on a veth: on already, nothing to do; off, switched on. A veth
    does not reset on the switch, so the wait for its link's return runs out."""
    found: dict[str, Any] = {"already_on": receive_checksums_on([iface], timeout=0.3)}
    subprocess.run(["ethtool", "-K", iface, "rx", "off"], check=True, capture_output=True)
    try:
        receive_checksums_on([iface], timeout=0.3)
    except RuntimeError as exc:
        found["error"] = str(exc)
    found["on_after"] = read_features(iface)[FEATURES["rx"]][0]
    return found


def _pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def half_close_server(bind: str, port: int, reply: int, timeout: float = 20.0) -> dict[str, Any]:
    """Accept one connection, read it to EOF, and only then send `reply` bytes and close: the
    reply can only arrive if the client's half-close left the other direction open."""
    with socket.create_server((bind, port)) as listener:
        _ready()
        listener.settimeout(timeout)
        conn, _ = listener.accept()
    with conn:
        conn.settimeout(timeout)
        got = _read_to_eof(conn)
        data = _pattern(2, reply)
        conn.sendall(data)
    return {"received": len(got), "received_sha256": _digest(got), "sent_sha256": _digest(data)}


def half_close_client(peer: str, port: int, send: int, timeout: float = 20.0) -> dict[str, Any]:
    """Send `send` bytes, shut the write side, then read the reply to EOF."""
    data = _pattern(1, send)
    with socket.create_connection((peer, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        got = _read_to_eof(sock)
    return {"sent_sha256": _digest(data), "received": len(got), "received_sha256": _digest(got)}


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(dst: str, count: int = 3, ttl: int = 64, timeout: float = 2.0) -> dict[str, Any]:
    """`ping` without ping: `count` echo requests with `ttl`; for each, the answer's source,
    ICMP type and code and the TTL it arrived with (None when nothing came in `timeout`)."""
    ident = os.getpid() & 0xFFFF
    answers: list[dict[str, Any] | None] = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        for seq in range(count):
            body = ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + b"stackbed" * 4
            msg = bytes([8, 0]) + b"\0\0" + body
            msg = msg[:2] + _icmp_checksum(msg).to_bytes(2, "big") + msg[4:]
            sent = time.monotonic()
            sock.sendto(msg, (dst, 0))
            answer = None
            while answer is None and (left := sent + timeout - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                pkt, (src, _) = sock.recvfrom(65535)
                ihl = (pkt[0] & 0x0F) * 4
                kind, code = pkt[ihl], pkt[ihl + 1]
                # an echo reply carries our id and seq; an error quotes our request after its
                # own 8 bytes and the quoted IPv4 header
                if kind == 0:
                    mine = pkt[ihl + 4 : ihl + 8] == body[:4]
                else:
                    quoted = ihl + 8 + (pkt[ihl + 8] & 0x0F) * 4
                    mine = pkt[quoted + 4 : quoted + 8] == body[:4]
                if mine:
                    rtt = round((time.monotonic() - sent) * 1000, 3)
                    answer = {"src": src, "type": kind, "code": code, "ttl": pkt[8], "rtt_ms": rtt}
            answers.append(answer)
    return {"answers": answers}


def hostile_frames(iface: str, dst_mac: str, src: str, dst: str, rounds: int = 3) -> dict[str, Any]:
    """A bounded burst of malformed frames to `dst_mac` (the middle node): runt, bad version,
    bad header checksum, Total Length past the frame, IP options, TTL 0 and 1, a bad
    fragment, a martian source, an oversized frame, ARP garbage; `rounds` of each."""
    mac_dst = bytes.fromhex(dst_mac.replace(":", ""))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((iface, 0))
        mac_src = sock.getsockname()[4]
        eth = mac_dst + mac_src + b"\x08\x00"

        def ip(ttl=64, total=40, vihl=0x45, flags=0, src_ip=src, opts=b"", fix=True) -> bytes:
            hdr = bytearray(
                bytes([vihl, 0]) + total.to_bytes(2, "big") + b"\x12\x34"
                + flags.to_bytes(2, "big") + bytes([ttl, 17]) + b"\0\0"
                + socket.inet_aton(src_ip) + socket.inet_aton(dst) + opts
            )  # fmt: skip
            if fix:
                hdr[10:12] = _icmp_checksum(bytes(hdr)).to_bytes(2, "big")
            return bytes(hdr) + b"\0" * max(0, total - len(hdr))

        frames = {
            "runt": eth,  # an IPv4 frame with no IPv4 header (shorter, the kernel refuses it)
            "bad_version": eth + ip(vihl=0x65),
            "bad_checksum": eth + ip(fix=False)[:10] + b"\xde\xad" + ip()[12:],
            "truncated": eth + ip(total=40)[:30],
            "options": eth + ip(vihl=0x46, total=44, opts=b"\x01\x01\x01\x00"),
            "ttl_0": eth + ip(ttl=0),
            "ttl_1": eth + ip(ttl=1),
            "bad_fragment": eth + ip(flags=0x2000, total=27),  # MF, 7 data bytes
            "martian_source": eth + ip(src_ip="127.0.0.1"),
            "oversized": eth + ip(total=1500) + b"\0" * 100,
            "bad_arp": mac_dst + mac_src + b"\x08\x06" + b"\xff" * 28,
        }
        sent: dict[str, int] = {}
        for name, frame in frames.items():
            for _ in range(rounds):
                try:
                    sock.send(frame)
                    sent[name] = sent.get(name, 0) + 1
                except OSError as e:  # the kernel refuses some (e.g. too long for the MTU)
                    sent[name] = sent.get(name, 0)
                    sent[f"{name}_refused"] = str(e)  # type: ignore[assignment]
                time.sleep(0.002)
    return {"sent": sent}


def timed_client(
    peer: str, port: int, send: int, seed: int, timeout: float = 1.0
) -> dict[str, Any]:
    """Connect (giving up after `timeout`), say how long the handshake took, send `send`
    pattern bytes, close, and wait for the peer to close: what a legitimate client during an
    attack sees. The digest lets the test compare with what the server got."""
    data = _pattern(seed, send)
    began = time.monotonic()
    try:
        sock = socket.create_connection((peer, port), timeout=timeout)
    except OSError as e:
        return {"connected": False, "error": str(e), "waited_s": time.monotonic() - began}
    connect_s = time.monotonic() - began
    sock.settimeout(30.0)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    _read_to_eof(sock)
    sock.close()
    return {"connected": True, "connect_s": connect_s, "sha256": _digest(data), "bytes": send}


CHECKS: dict[str, Callable[..., dict[str, Any]]] = {
    "ring_views": ring_views,
    "ring_overflow": ring_overflow,
    "ring_close_with_live_slice": ring_close_with_live_slice,
    "oversize_tx": oversize_tx,
    "tso_send": tso_send,
    "ip_recv": ip_recv,
    "take_over_roundtrip": take_over_roundtrip,
    "receive_checksums": receive_checksums,
    "half_close_server": half_close_server,
    "half_close_client": half_close_client,
    "icmp_echo": icmp_echo,
    "hostile_frames": hostile_frames,
    "timed_client": timed_client,
}


def main() -> int:
    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(CHECKS[name](**kwargs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The monolithic user-level stack: NIC access and every protocol in one process.

This is the "monolithic" design of Network Subsystems Reloaded: one protection domain holds the
driver (an AF_PACKET device) and the protocols (`core.NetStack`); applications are other
processes, clients of it through the session boundary (`session`: shared-memory rings and
doorbells). The factored design reuses the same NetStack and the same session boundary and only
adds the driver/protocol split, so the difference measured between the two is that split.

Run as `python3 -m guest.stack.mono --iface eth1 --addr 198.18.1.1/24`. It takes the NIC from
the kernel (no kernel address, offloads set on purpose), serves applications on a UNIX socket
(default /run/stackbed/stack-IFACE.sock), prints one JSON line `{"event": "ready", ...}` when it
serves, and on SIGTERM/SIGINT gives the NIC back and prints its counters as a final JSON line.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from guest.stack.core import events as ev
from guest.stack.core.netstack import NetStack
from guest.stack.device.base import Device
from guest.stack.nic import LEVERS, Nic, Offloads
from guest.stack.session import requests as rq
from guest.stack.session.backend import dispatch
from guest.stack.session.server import SessionServer
from guest.stack.wire.addr import ipv4

RECV_CHUNK = 256 * 1024
DEVICE_KINDS = ("ring-v2", "ring-v3", "packet")
#: Every lever on: the fastest configuration (see the levers bench, configs/levers.yaml).
DEFAULT_OFFLOADS = Offloads(csum=True, tso=True, gro=True)
#: How long a stack asked to stop keeps running to finish close handshakes (FIN, last data).
#: A lost FIN is resent on the retransmission timer, which backs off: under emulation with
#: loss the RTO can reach seconds, and 5 s allowed one resend only, so a peer could miss
#: the FIN for good (the kernel keeps an orphaned connection retrying for minutes).
DEFAULT_LINGER_S = 20.0


def _offloads(text: str) -> Offloads:
    try:
        return Offloads.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def default_socket_path(iface: str) -> str:
    return f"/run/stackbed/stack-{iface}.sock"


def _endpoint(text: str) -> tuple[int, int]:
    ip, _, port = text.rpartition(":")
    return ipv4(ip), int(port)


def _failure_errno(reason: str) -> int:
    reason = reason.lower()
    if "refused" in reason or "reset" in reason:
        return errno.ECONNREFUSED
    if "unreach" in reason:
        return errno.EHOSTUNREACH
    if "time" in reason:
        return errno.ETIMEDOUT
    return errno.ECONNABORTED


class StackBackend:
    """Maps the session server's sockets onto NetStack handles and relays events both ways.

    Received data is pulled from TCP only as fast as the application's ring takes it: a short
    `deliver` parks the rest and stops reading that connection, so the TCP receive window closes
    and the peer is flow-controlled, instead of this process buffering without bound.
    """

    def __init__(self, stack: NetStack, server: SessionServer, clock: Callable[[], float]):
        self.st = stack
        self.server = server
        self.clock = clock
        self.handle_of: dict[int, int] = {}  # session sock_id -> NetStack handle
        self.sock_of: dict[int, int] = {}  # NetStack handle -> session sock_id
        self.connecting: dict[int, rq.ConnectReq] = {}  # handle -> request awaiting Connected
        self.parked: dict[int, memoryview] = {}  # sock_id -> received bytes the ring refused
        self.eof_pending: set[int] = set()  # sock_ids whose PEER_CLOSED waits behind parked
        self.blocked_tx: set[int] = set()  # sock_ids whose send buffer was full
        self._buf = bytearray(RECV_CHUNK)

    # --- mapping ------------------------------------------------------------------------------

    def _map(self, sock_id: int, handle: int) -> None:
        self.handle_of[sock_id] = handle
        self.sock_of[handle] = sock_id

    def _forget(self, sock_id: int) -> int | None:
        handle = self.handle_of.pop(sock_id, None)
        if handle is not None:
            self.sock_of.pop(handle, None)
        self.parked.pop(sock_id, None)
        self.eof_pending.discard(sock_id)
        self.blocked_tx.discard(sock_id)
        return handle

    # --- StackBackend (requests from applications) -------------------------------------------

    def connect(self, req: rq.ConnectReq) -> None:
        try:
            handle = self.st.tcp_connect(req.ip, req.port, self.clock())
        except OSError as e:
            self.server.complete(req, e.errno or errno.EINVAL)
            return
        self._map(req.sock_id, handle)
        self.connecting[handle] = req

    def listen(self, req: rq.ListenReq) -> None:
        try:
            handle = self.st.tcp_listen(req.port, req.backlog)
        except OSError as e:
            self.server.complete(req, e.errno or errno.EINVAL)
            return
        self._map(req.sock_id, handle)
        self.server.complete(req, 0, port=int(self.st.socket_info(handle)["local_port"]))

    def udp_bind(self, req: rq.BindReq) -> None:
        try:
            handle = self.st.udp_bind(req.port)
        except OSError as e:
            self.server.complete(req, e.errno or errno.EINVAL)
            return
        self._map(req.sock_id, handle)
        self.server.complete(req, 0, port=int(self.st.socket_info(handle)["local_port"]))

    def udp_sendto(self, req: rq.SendToReq) -> None:
        handle = self.handle_of.get(req.sock_id)
        if handle is None:
            self.server.complete(req, errno.EBADF)
            return
        try:
            ok = self.st.udp_sendto(handle, req.payload, req.ip, req.port, self.clock())
        except OSError as e:
            self.server.complete(req, e.errno or errno.EINVAL)
            return
        self.server.complete(req, 0 if ok else errno.ENOBUFS)

    def send(self, sock_id: int, data: list[memoryview]) -> int:
        handle = self.handle_of.get(sock_id)
        total = sum(len(v) for v in data)
        if handle is None:
            return total  # the socket is gone: drop, as the contract says
        taken = 0
        try:
            for view in data:
                n = self.st.tcp_send(handle, view)
                taken += n
                if n < len(view):
                    self.blocked_tx.add(sock_id)
                    break
        except BrokenPipeError:
            return total
        return taken

    def rx_space(self, sock_id: int) -> None:
        handle = self.handle_of.get(sock_id)
        if handle is not None:
            self._drain(sock_id, handle)

    def shutdown_write(self, sock_id: int) -> None:
        handle = self.handle_of.get(sock_id)
        if handle is not None:
            self.st.tcp_shutdown(handle)

    def close(self, sock_id: int, abort: bool) -> None:
        handle = self._forget(sock_id)
        if handle is None:
            return
        self.connecting.pop(handle, None)
        try:
            if abort:
                self.st.tcp_abort(handle)
            else:
                self.st.tcp_close(handle, self.clock())
        except OSError:
            pass  # already released by the stack

    # --- events from the stack ---------------------------------------------------------------

    def _drain(self, sock_id: int, handle: int) -> None:
        """Deliver parked bytes, then read the connection until the ring refuses more."""
        server = self.server
        parked = self.parked.pop(sock_id, None)
        if parked is not None:
            n = server.deliver(sock_id, parked)
            if n < len(parked):
                self.parked[sock_id] = parked[n:]
                return
        buf = self._buf
        while True:
            try:
                got = self.st.tcp_recv_into(handle, buf)
            except OSError:
                return
            if not got:
                break
            chunk = bytes(buf[:got])
            n = server.deliver(sock_id, chunk)
            if n < got:
                self.parked[sock_id] = memoryview(chunk)[n:]
                return
        if sock_id in self.eof_pending:
            self.eof_pending.discard(sock_id)
            server.notify(sock_id, rq.Event.PEER_CLOSED)

    def handle_events(self) -> None:
        server, st = self.server, self.st
        for e in st.events():
            handle = e.handle
            sock_id = self.sock_of.get(handle)
            match e:
                case ev.Connected():
                    req = self.connecting.pop(handle, None)
                    if req is not None:
                        local = _endpoint(str(st.socket_info(handle)["local"]))
                        server.complete(req, 0, local=local)
                case ev.Accepted():
                    self._accept_all(handle)
                case ev.Readable():
                    if sock_id is not None and sock_id not in self.parked:
                        self._drain(sock_id, handle)
                case ev.Writable():
                    if sock_id is not None and sock_id in self.blocked_tx:
                        self.blocked_tx.discard(sock_id)
                        server.tx_kick(sock_id)
                case ev.PeerClosed():
                    if sock_id is not None:
                        self._drain(sock_id, handle)
                        if sock_id in self.parked:
                            self.eof_pending.add(sock_id)
                        else:
                            server.notify(sock_id, rq.Event.PEER_CLOSED)
                case ev.Reset() | ev.ConnectionFailed():
                    reason = getattr(e, "reason", "reset")
                    req = self.connecting.pop(handle, None)
                    if req is not None:
                        server.complete(req, _failure_errno(reason))
                        self._forget(req.sock_id)
                    elif sock_id is not None:
                        if isinstance(e, ev.Reset):
                            server.notify(sock_id, rq.Event.RESET, errno.ECONNRESET)
                        else:
                            server.notify(sock_id, rq.Event.FAILED, _failure_errno(reason))
                case ev.Closed():
                    if sock_id is not None:
                        self._drain(sock_id, handle)
                        server.notify(sock_id, rq.Event.CLOSED)
                case ev.UdpReadable():
                    while sock_id is not None and (got := st.udp_recvfrom(handle)) is not None:
                        data, ip, port = got
                        server.deliver_datagram(sock_id, (ip, port), data)

    def _accept_all(self, listener: int) -> None:
        listener_sock = self.sock_of.get(listener)
        while (handle := self.st.tcp_accept(listener)) is not None:
            if listener_sock is None:
                self.st.tcp_abort(handle)
                continue
            peer = _endpoint(str(self.st.socket_info(handle)["remote"]))
            sock_id = self.server.incoming(listener_sock, peer)
            if sock_id is None:
                self.st.tcp_abort(handle)
                continue
            self._map(sock_id, handle)
            self._drain(sock_id, handle)


def open_device(kind: str, iface: str, vnet_hdr: bool = False) -> Device:
    """The NIC from user level. ring-v2 is the default: TPACKET_V3's block retire timer would
    hold a lone frame for up to a scheduler tick, which request/response latency cannot afford."""
    if kind == "packet":
        from guest.stack.device.packet import PacketDevice

        return PacketDevice(iface, vnet_hdr=vnet_hdr)
    from guest.stack.device.ring import RingDevice

    return RingDevice(iface, version=3 if kind == "ring-v3" else 2, vnet_hdr=vnet_hdr)


class StackProcess:
    """Device + Nic + NetStack + session server, driven by one poll loop.

    This is the protocol side that the monolithic and the factored stacks share: the monolithic
    stack runs it over the NIC itself (`MonoStack`), the factored stack's protocol domain runs
    it over shared-memory rings to a driver domain (`factored.shmdev.ShmDevice`). So the
    difference measured between the two paths is the device underneath and nothing else.
    """

    def __init__(
        self,
        dev: Device,
        offloads: Offloads,
        addr: str,
        socket_path: str,
        gateway: str | None = None,
        linger: float = DEFAULT_LINGER_S,
    ):
        self.dev = dev
        self.nic = Nic(dev, offloads)
        self.clock = time.monotonic
        self.st = NetStack(
            mac=dev.mac,
            addr=addr,
            mtu=dev.mtu,
            gateway=gateway,
            now=self.clock(),
            tso_max_size=self.nic.tso_max_size,
            tx_checksum_offload=self.nic.tx_checksum_offload,
        )
        os.makedirs(os.path.dirname(socket_path) or ".", exist_ok=True)
        if os.path.exists(socket_path):
            os.unlink(socket_path)  # a stale socket from a stack that died
        self.server = SessionServer(socket_path, mode=0o666)
        self.backend = StackBackend(self.st, self.server, self.clock)
        self.socket_path = socket_path
        self.linger = linger
        self._stop = False

    def stop(self, *_args) -> None:
        self._stop = True

    def _transmit(self, now: float) -> None:
        frames = self.st.poll(now)
        if frames:
            self.nic.transmit(frames)
        self.dev.flush()

    def run(self) -> None:
        sel = selectors.PollSelector()
        dev_fd = self.dev.fileno()
        version = -1
        server, backend, st, dev = self.server, self.backend, self.st, self.dev
        nic_receive, deliver = self.nic.receive, st.receive_frame
        # A device whose fd is a doorbell (the factored stack's shared-memory rings) must be
        # told before the loop sleeps, and may hold frames while its fd is not readable.
        prepare_to_sleep: Callable[[], bool] | None = getattr(dev, "prepare_to_sleep", None)
        rx_waiting: Callable[[], bool] = getattr(dev, "rx_waiting", bool)
        linger_until: float | None = None
        while True:
            if self._stop:
                # Asked to stop: finish the close handshakes under way first (see
                # NetStack.tcp_lingering), for at most `linger` seconds.
                if linger_until is None:
                    linger_until = self.clock() + self.linger
                if not st.tcp_lingering() or self.clock() >= linger_until:
                    break
            if server.fds_version != version:
                version = server.fds_version
                sel.close()
                sel = selectors.PollSelector()
                sel.register(dev_fd, selectors.EVENT_READ)
                for fd in server.fds():
                    sel.register(fd, selectors.EVENT_READ)
            deadline = st.next_timeout()
            now = self.clock()
            timeout = 0.5 if deadline is None else min(0.5, max(0.0, deadline - now))
            if dev.tx_pending:
                timeout = min(timeout, 0.001)
            elif linger_until is not None:
                timeout = min(timeout, 0.05)
            rx_now = False
            if prepare_to_sleep is not None and (
                rx_waiting() or (timeout > 0 and not prepare_to_sleep())
            ):
                timeout, rx_now = 0.0, True
            for key, _mask in sel.select(timeout):
                if key.fd == dev_fd:
                    rx_now = True
                else:
                    dispatch(server, backend, server.handle_readable(key.fd))
            if rx_now:
                now = self.clock()
                for _ in range(64):  # bounded, so sessions are served under load too
                    if not nic_receive(deliver, now, 256):
                        break
            now = self.clock()
            backend.handle_events()  # a Writable event re-queues blocked senders (tx_kick)
            self._transmit(now)
            backend.handle_events()
        sel.close()

    def stats(self) -> dict:
        return {
            "stack": self.st.stats(),
            "device": asdict(self.dev.stats),
            "nic": self.nic.stats(),
        }

    def close_server(self) -> None:
        self.server.close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)


class MonoStack(StackProcess):
    """One process: the NIC (an AF_PACKET device) + NetStack + session server."""

    def __init__(
        self,
        iface: str,
        addr: str,
        socket_path: str,
        device: str = "ring-v2",
        gateway: str | None = None,
        offloads: Offloads = DEFAULT_OFFLOADS,
        linger: float = DEFAULT_LINGER_S,
    ):
        from guest.stack.device.setup import take_over

        self.iface = iface
        self.device_kind = device
        self.takeover = take_over(iface, offloads.features)
        try:
            dev = open_device(device, iface, offloads.vnet_hdr)
            try:
                super().__init__(dev, offloads, addr, socket_path, gateway, linger)
            except BaseException:
                dev.close()
                raise
        except BaseException:
            self.takeover.restore()
            raise

    def close(self) -> dict:
        stats = self.stats()
        try:
            self.close_server()
            self.dev.close()
        finally:
            self.takeover.restore()
        return stats


def add_stack_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every user-level stack takes (the monolithic and the factored one)."""
    ap.add_argument("--iface", required=True, help="NIC to take from the kernel")
    ap.add_argument("--addr", required=True, help="the stack's address, CIDR (198.18.x.y/n)")
    ap.add_argument("--gateway", help="default gateway (optional)")
    ap.add_argument(
        "--socket", help="UNIX socket for applications (default /run/stackbed/stack-IFACE.sock)"
    )
    ap.add_argument("--device", choices=DEVICE_KINDS, default="ring-v2")
    ap.add_argument(
        "--offload",
        type=_offloads,
        default=DEFAULT_OFFLOADS,
        help=f"none, all, or a comma list of {', '.join(LEVERS)} (default {DEFAULT_OFFLOADS})",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.stack.mono", description=__doc__)
    add_stack_arguments(ap)
    args = ap.parse_args(argv)
    path = args.socket or default_socket_path(args.iface)
    stack = MonoStack(args.iface, args.addr, path, args.device, args.gateway, args.offload)
    signal.signal(signal.SIGTERM, stack.stop)
    signal.signal(signal.SIGINT, stack.stop)
    print(
        json.dumps(
            {
                "event": "ready",
                "iface": args.iface,
                "addr": args.addr,
                "socket": path,
                "device": args.device,
                "offload": str(args.offload),
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    try:
        stack.run()
    finally:
        stats = stack.close()
        print(json.dumps({"event": "stopped", "stats": stats}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import json
import os
import signal
import sys

from guest.stack.device.kinds import open_device
from guest.stack.loop import StackLoop
from guest.stack.offloads import Offloads
from guest.stack.options import (
    DEFAULT_DEVICE,
    DEFAULT_LINGER_S,
    DEFAULT_OFFLOADS,
    add_stack_arguments,
    default_socket_path,
    tcp_config_from,
)
from guest.stack.tcp.config import TcpConfig


class MonoStack(StackLoop):
    """One process: the NIC (an AF_PACKET device) + NetStack + session server."""

    def __init__(
        self,
        iface: str,
        addr: str,
        socket_path: str,
        device: str = DEFAULT_DEVICE,
        gateway: str | None = None,
        offloads: Offloads = DEFAULT_OFFLOADS,
        linger: float = DEFAULT_LINGER_S,
        inject_rx_us: float = 0.0,
        tcp_config: TcpConfig | None = None,
        profile: bool = False,
    ):
        from guest.stack.device.setup import take_over

        self.iface = iface
        self.device_kind = device
        self.takeover = take_over(iface, offloads.features)
        try:
            dev = open_device(device, iface, offloads.vnet_hdr)
            try:
                super().__init__(
                    dev,
                    offloads,
                    addr,
                    socket_path,
                    gateway,
                    linger,
                    inject_rx_us,
                    tcp_config,
                    profile=profile,
                )
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.stack.mono", description=__doc__)
    add_stack_arguments(ap)
    args = ap.parse_args(argv)
    path = args.socket or default_socket_path(args.iface)
    stack = MonoStack(
        args.iface,
        args.addr,
        path,
        args.device,
        args.gateway,
        args.offload,
        inject_rx_us=args.inject_rx_us,
        tcp_config=tcp_config_from(args),
        profile=args.profile,
    )
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
                "cc": args.cc,
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

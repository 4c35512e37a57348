"""What asking for a transmission costs over each boundary: `python3 -m guest.bench.transmit`.

The one crossing left on the shared rings' data path is "kernel, take the TX slots I filled".
Measured here three ways in one run, each as the time from the request until the kernel has
delivered the frame to the peer (a UNIX datagram socket stands in for the NIC: `send()` of no
bytes queues one empty datagram, which the measuring side reads back), so the figures compare:

- **syscall**: the requesting process makes the `send()` itself (the monolithic stack);
- **uring**: it submits the send on the send-only io_uring (`uring.py`, `--link uring`), which
  the kernel runs inline;
- **driver**: it rings an eventfd and a second process running the driver domain's loop
  (`shared.Kicker`, `--link shared`), asleep on it, wakes and makes the `send()`: the price
  of waking another domain.

Prints one JSON object (microseconds per transmission). No timed assertions: the test only
checks that the figures exist and every transmission arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from guest.stack.factored.shared import Kicker
from guest.stack.factored.uring import SendRing, UringTransmit
from guest.stack.factored.uring import supported as uring_supported


def _timed(request: Callable[[], None], peer: socket.socket, count: int) -> float:
    """Microseconds per request-until-delivered; every datagram must arrive (1 s each)."""
    peer.settimeout(1.0)
    t0 = time.perf_counter()
    for _ in range(count):
        request()
        peer.recv(16)  # raises TimeoutError if the transmission was lost
    return (time.perf_counter() - t0) / count * 1e6


def measure(count: int) -> dict:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    results: dict = {"transmissions": count, "cpus": len(os.sched_getaffinity(0))}
    try:
        results["syscall_us"] = round(
            _timed(lambda: ours.send(b"", socket.MSG_DONTWAIT), peer, count), 1
        )
        if (why := uring_supported()) is None:
            ring = SendRing(ours.fileno())
            transmit = UringTransmit(os.dup(ring.fd), ring.layout, ring.map_queues())
            try:
                results["uring_us"] = round(_timed(transmit.request, peer, count), 1)
                results["uring_errors"] = transmit.stats.errors
            finally:
                transmit.close()
                ring.close()
        else:
            results["uring_us"] = None
            results["uring_unavailable"] = why
        bell = os.eventfd(0, os.EFD_NONBLOCK)
        pid = os.fork()
        if pid == 0:  # the driver domain's own loop, unconfined
            code = 1
            try:
                kicker = Kicker(ours, bell)
                signal.signal(signal.SIGTERM, kicker.stop)
                kicker.run()
                code = 0
            finally:
                os._exit(code)
        try:
            results["driver_us"] = round(_timed(lambda: os.eventfd_write(bell, 1), peer, count), 1)
        finally:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
            os.close(bell)
    finally:
        ours.close()
        peer.close()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m guest.bench.transmit")
    ap.add_argument("--count", type=int, default=5_000, help="transmissions per way")
    args = ap.parse_args(argv)
    print(json.dumps({"bench": "factored-transmit", **measure(args.count)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

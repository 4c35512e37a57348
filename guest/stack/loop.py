"""The one event loop of our user-level stack, which both process wirings run.

`StackLoop` holds a device, the offload levers (`Nic`), `NetStack` and the session server, and
drives them with one poll loop. The monolithic stack (`mono`) runs it over the NIC itself; the
factored stack's protocol domain (`factored`) runs it over whatever its driver boundary gives
it. So the difference measured between the two paths is the device underneath and nothing else.
"""

from __future__ import annotations

import os
import resource
import selectors
import time
from collections.abc import Callable
from dataclasses import asdict

from guest.stack.backend import NetStackBackend
from guest.stack.core.netstack import NetStack
from guest.stack.cpuprofile import LayerProfile
from guest.stack.device.base import Device
from guest.stack.nic import Nic
from guest.stack.offloads import Offloads
from guest.stack.options import DEFAULT_LINGER_S
from guest.stack.session.backend import dispatch
from guest.stack.session.server import SessionServer
from guest.stack.tcp.config import TcpConfig

#: Rounds of "transmit, then hand events to the sessions" in one loop pass before the loop
#: polls again; bounded so that a stack that keeps making work for itself still reads its NIC
#: and sessions.
_SETTLE_ROUNDS = 4


def _cpu_seconds() -> tuple[float, float]:
    """This process's CPU so far: user, system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def slowed(
    deliver: Callable[[memoryview, float, bool], None], seconds: float
) -> Callable[[memoryview, float, bool], None]:
    """`deliver` after spinning `seconds` per frame: the fault-injection knob
    (`--inject-rx-us`) that lets a nightly prove it sees a slowdown of known size. It spins
    rather than sleeps so that it costs CPU, as a slower receive path would."""

    def slow(frame: memoryview, now: float, checksum_ok: bool) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        deliver(frame, now, checksum_ok)

    return slow


class StackLoop:
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
        inject_rx_us: float = 0.0,
        tcp_config: TcpConfig | None = None,
        profile: bool = False,
    ):
        self.dev = dev
        #: `--profile`: the loop runs under cProfile and `stats()` says where its CPU went.
        self.profile = LayerProfile() if profile else None
        self.inject_rx_s = max(inject_rx_us, 0.0) / 1e6
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
            tcp_config=tcp_config,
        )
        os.makedirs(os.path.dirname(socket_path) or ".", exist_ok=True)
        if os.path.exists(socket_path):
            os.unlink(socket_path)  # a stale socket from a stack that died
        self.server = SessionServer(socket_path, mode=0o666)
        self.backend = NetStackBackend(self.st, self.server, self.clock)
        self.socket_path = socket_path
        self.linger = linger
        self._stop = False
        #: Loop passes (one poll system call each): what request/response traffic pays per
        #: wakeup, reported with the counters so a bench can show passes per transaction.
        self.passes = 0
        self._cpu_at_start = _cpu_seconds()

    def stop(self, *_args) -> None:
        self._stop = True

    def _transmit(self, now: float) -> None:
        frames = self.st.poll(now)
        if frames:
            self.nic.transmit(frames)
        self.dev.flush()

    def run(self) -> None:
        self._cpu_at_start = _cpu_seconds()
        if self.profile is None:
            self._run()
            return
        self.profile.start()
        try:
            self._run()
        finally:
            self.profile.stop()

    def _run(self) -> None:
        sel = selectors.PollSelector()
        dev_fd = self.dev.fileno()
        version = -1
        server, backend, st, dev = self.server, self.backend, self.st, self.dev
        nic_receive, deliver = self.nic.receive, st.receive_frame
        if self.inject_rx_s:
            deliver = slowed(deliver, self.inject_rx_s)
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
            self.passes += 1
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
            for _ in range(_SETTLE_ROUNDS):
                self._transmit(now)
                backend.handle_events()
                # Handing data to an application reads it from its connection, which then
                # wants polling (it may owe the peer a window update): settle that here
                # rather than in a loop pass of its own, which costs a poll system call and
                # the loop's bookkeeping once per request under request/response traffic.
                if not st.has_work:
                    break
        sel.close()

    def stats(self) -> dict:
        return {
            "stack": self.st.stats(),
            "device": asdict(self.dev.stats),
            "nic": self.nic.stats(),
            "loop": {"passes": self.passes},
            "cpu": self._cpu_since_start(),
            **({"profile": self.profile.by_layer()} if self.profile is not None else {}),
        }

    def _cpu_since_start(self) -> dict[str, float]:
        """The loop's CPU (the stack's start-up left out): what a bench divides by its
        transactions or megabytes."""
        user, system = _cpu_seconds()
        user0, system0 = self._cpu_at_start
        return {"user_s": round(user - user0, 3), "system_s": round(system - system0, 3)}

    def close_server(self) -> None:
        self.server.close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

"""The session boundary end to end: a SessionServer driven by `run` in a thread with the fake
backend, applications in this process and in child processes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guest.stack.session import (
    SessionServer,
    StackClient,
    StackSocket,
    dispatch,
    pump_tx,
    run,
    wait_any,
)
from guest.stack.session.protocol import MAGIC, VERSION, Message, Op
from guest.stack.session.ring import INDEX_LINE
from guest.testing.fake_backend import BLACKHOLE, CHARGEN, CHARGEN_BLOCK, DISCARD, ECHO, FakeBackend

ROOT = Path(__file__).resolve().parents[2]
REMOTE = "198.18.0.2"


@dataclass
class Stack:
    path: str
    server: SessionServer
    backend: FakeBackend
    stop: threading.Event
    thread: threading.Thread

    def shut_down(self) -> None:
        """Stop the loop, then close the server (it is not thread-safe)."""
        self.stop.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def stack() -> Iterator[Stack]:
    path = f"@stackbed-test-{os.getpid()}-{time.monotonic_ns()}"
    server = SessionServer(path)
    backend = FakeBackend(server)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(server, backend, stop), daemon=True)
    thread.start()
    fixture = Stack(path, server, backend, stop, thread)
    yield fixture
    fixture.shut_down()


def until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def recv_exactly(sock: StackSocket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError(f"EOF after {got} of {n} bytes")
        got += k
    return bytes(buf)


def echo_roundtrip(sock: StackSocket, data: bytes) -> bytes:
    """Send and read back concurrently (the rings are smaller than `data`)."""
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(recv_exactly(sock, len(data))))
    reader.start()
    sock.sendall(data)
    reader.join(30)
    return out[0]


# ---------------------------------------------------------------------- in one process


def test_echo_send_recv_shutdown_close(stack: Stack) -> None:
    with StackClient(stack.path) as client:
        sock = client.connect((REMOTE, ECHO), timeout=5)
        assert sock.peer == (REMOTE, ECHO) and sock.local[0] == "198.18.0.1"
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
        data = random.Random(1).randbytes(3_000_000)
        assert echo_roundtrip(sock, data) == data
        sock.shutdown_write()
        with pytest.raises(BrokenPipeError):
            sock.sendall(b"late")
        assert sock.recv(10) == b""  # the echo service closes after our FIN
        sock.close()
        with pytest.raises(OSError) as info:
            sock.recv(1)
        assert info.value.errno == errno.EBADF
    until(lambda: stack.server.socket_count() == 0 and stack.server.session_count() == 0)


def test_discard_hashes_and_chargen_pattern(stack: Stack) -> None:
    data = random.Random(2).randbytes(2_000_000)
    with StackClient(stack.path) as client:
        sink = client.connect((REMOTE, DISCARD))
        sink.sendall(data)
        sink.close()  # graceful: queued data is still taken
        source = client.connect((REMOTE, CHARGEN))
        got = recv_exactly(source, 200_000)
        source.close()
    until(lambda: sink.sock_id in stack.backend.stats.digests)
    assert stack.backend.stats.digests[sink.sock_id] == hashlib.sha256(data).hexdigest()
    pattern = CHARGEN_BLOCK * 4
    assert got == pattern[:200_000]


def test_connect_errors(stack: Stack) -> None:
    with StackClient(stack.path) as client:
        with pytest.raises(ConnectionRefusedError):
            client.connect((REMOTE, 4444))
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            client.connect((REMOTE, BLACKHOLE), timeout=0.2)
        assert time.monotonic() - start < 2
        with pytest.raises(OSError):
            client.connect(("not-an-ip", 80))
        assert client.connect((REMOTE, ECHO)).recv_into(bytearray(0)) == 0
    until(lambda: stack.server.socket_count() == 0)
    aborted = [sock_id for sock_id, abort in stack.backend.stats.closed if abort]
    assert aborted  # the timed-out connect was aborted in the stack


def test_recv_timeout_and_settimeout(stack: Stack) -> None:
    with StackClient(stack.path) as client:
        sock = client.connect((REMOTE, ECHO))
        sock.settimeout(0.05)
        assert sock.gettimeout() == 0.05
        with pytest.raises(TimeoutError):
            sock.recv(10)
        sock.sendall(b"x")
        assert sock.recv(10) == b"x"


def test_listen_accept_between_sessions(stack: Stack) -> None:
    with StackClient(stack.path) as server_app, StackClient(stack.path) as client_app:
        listener = server_app.listen(5001)
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.05)
        out = client_app.connect(("198.18.0.1", 5001))
        conn, peer = listener.accept(timeout=5)
        assert peer == out.local
        data = random.Random(3).randbytes(1_500_000)
        thread = threading.Thread(target=out.sendall, args=(data,))
        thread.start()
        assert recv_exactly(conn, len(data)) == data
        thread.join()
        conn.sendall(b"reply")
        assert out.recv(10) == b"reply"
        out.shutdown_write()
        assert conn.recv(10) == b""
        with pytest.raises(OSError) as info:
            server_app.listen(5001)
        assert info.value.errno == errno.EADDRINUSE
        out.close()
        conn.close()
        listener.close()
        # A close is a request the stack serves in its own time; another session's connect
        # may overtake it, so wait until the stack has let go of every socket.
        until(lambda: stack.server.socket_count() == 0)
        with pytest.raises(ConnectionRefusedError):
            client_app.connect(("198.18.0.1", 5001))


def test_accept_timeout_loses_no_connection(stack: Stack) -> None:
    with StackClient(stack.path) as app:
        listener = app.listen(5002, backlog=2)
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.01)
        a = app.connect(("198.18.0.1", 5002))
        b = app.connect(("198.18.0.1", 5002))
        with pytest.raises(ConnectionRefusedError):
            app.connect(("198.18.0.1", 5002))  # backlog full
        a.sendall(b"early")  # delivered before accept
        first, _ = listener.accept(timeout=1)
        second, _ = listener.accept(timeout=1)
        assert first.recv(10) == b"early"
        b.sendall(b"b")
        assert second.recv(10) == b"b"
        assert stack.server.stats.backlog_drops == 1


def test_reset_and_broken_pipe(stack: Stack) -> None:
    with StackClient(stack.path) as app:
        listener = app.listen(5003)
        out = app.connect(("198.18.0.1", 5003))
        conn, _ = listener.accept(timeout=1)
        conn.sendall(b"unread")
        until(lambda: out._channel is not None and out._channel.rx.readable())
        out.close()  # unread data: reset, as Linux does
        with pytest.raises(ConnectionResetError):
            conn.recv(10)
        with pytest.raises(ConnectionResetError):
            conn.sendall(b"x")


def test_udp(stack: Stack) -> None:
    with StackClient(stack.path) as app:
        a = app.udp_bind()
        b = app.udp_bind(6000)
        assert b.port == 6000
        a.sendto(b"to echo", (REMOTE, ECHO))
        assert a.recvfrom(100) == (b"to echo", (REMOTE, ECHO))
        a.sendto(b"to b", ("198.18.0.1", 6000))
        assert b.recvfrom(2) == (b"to", ("198.18.0.1", a.port))
        b.settimeout(0.05)
        with pytest.raises(TimeoutError):
            b.recvfrom(10)
        with pytest.raises(OSError) as info:
            app.udp_bind(6000)
        assert info.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError):
            a.sendto(b"x" * 70000, (REMOTE, ECHO))
        a.close()
        b.close()


def test_filesystem_path_and_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "stack-eth1.sock")
    stale = SessionServer(path)
    stale._listener.close()  # a stack that died and left its socket file behind
    server = SessionServer(path, mode=0o660)
    assert os.stat(path).st_mode & 0o777 == 0o660
    backend = FakeBackend(server)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(server, backend, stop), daemon=True)
    thread.start()
    try:
        with StackClient(path) as app:
            sock = app.connect((REMOTE, ECHO))
            sock.sendall(b"ok")
            assert sock.recv(2) == b"ok"
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert not os.path.exists(path)


def test_blocked_recv_sees_the_server_die(stack: Stack) -> None:
    app = StackClient(stack.path)
    sock = app.connect((REMOTE, ECHO))
    threading.Timer(0.1, stack.shut_down).start()
    with pytest.raises(ConnectionResetError):
        sock.recv(10)
    with pytest.raises(ConnectionResetError):
        app.connect((REMOTE, ECHO))
    app.close()


def test_threads_share_one_client(stack: Stack) -> None:
    with StackClient(stack.path) as app:
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            try:
                sock = app.connect((REMOTE, ECHO), timeout=5)
                data = random.Random(seed).randbytes(200_000)
                assert echo_roundtrip(sock, data) == data
                sock.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors


# --------------------------------------------------------------- doorbell epochs, stack side


@pytest.fixture
def manual(stack: Stack) -> Stack:
    """The fixture's stack with its loop stopped: the test drives `handle_readable` itself."""
    stack.stop.set()
    stack.thread.join(5)
    return stack


def _connect(stack: Stack, port: int) -> tuple[StackClient, StackSocket]:
    """Connect with the loop driven by hand until the reply is in."""
    app_box: list[StackClient] = []
    sock_box: list[StackSocket] = []

    def open_() -> None:
        app_box.append(StackClient(stack.path))
        sock_box.append(app_box[0].connect((REMOTE, port)))

    opener = threading.Thread(target=open_)
    opener.start()
    while opener.is_alive():
        for fd in stack.server.fds():
            dispatch(stack.server, stack.backend, stack.server.handle_readable(fd))
        opener.join(0.001)
    return app_box[0], sock_box[0]


def test_stale_tx_ring_does_not_lose_the_next_one(manual: Stack) -> None:
    """A ring that arrives after the stack already took its data must not use up the epoch."""
    server, backend = manual.server, manual.backend
    app, sock = _connect(manual, DISCARD)
    channel = sock._channel
    assert channel is not None
    sid = sock.sock_id
    bell = server._sockets[sid].channel.stack_bell.fd  # type: ignore[union-attr]
    assert channel.tx.write(b"one")  # published; the client is slow to notify
    pump_tx(server, backend, sid)  # the stack takes it anyway (a kick), re-arms
    assert backend.stats.discarded[sid] == 3
    assert channel.data_notifier.notify()  # the late notify rings for the new epoch
    dispatch(server, backend, server.handle_readable(bell))  # stale: nothing to take
    assert channel.tx.write(b"two")
    assert channel.data_notifier.notify()  # ... and the next data still rings
    dispatch(server, backend, server.handle_readable(bell))
    assert backend.stats.discarded[sid] == 6
    app.close()


def test_stale_rx_space_ring_does_not_lose_the_next_one(manual: Stack) -> None:
    """Likewise for 'room in the receive ring' rings."""
    server, backend = manual.server, manual.backend
    app, sock = _connect(manual, CHARGEN)
    channel = sock._channel
    assert channel is not None
    sid = sock.sock_id
    stack_side = server._sockets[sid].channel
    assert stack_side is not None
    assert stack_side.rx_ring.free() == 0  # full: the stack waits for room
    buf = bytearray(channel.layout.rx.slot_size)
    channel.rx.read_into(buf)  # frees a slot; the client is slow to notify
    backend.rx_space(sid)  # the stack refills anyway, re-arms
    assert stack_side.rx_ring.free() == 0
    assert channel.space_notifier.notify()  # late: rings for the new epoch
    dispatch(server, backend, server.handle_readable(stack_side.stack_bell.fd))  # stale
    channel.rx.read_into(buf)
    assert channel.space_notifier.notify()  # the next room still rings
    dispatch(server, backend, server.handle_readable(stack_side.stack_bell.fd))
    assert stack_side.rx_ring.free() == 0  # refilled
    app.close()


# --------------------------------------------------------------------- fault containment


def test_full_rx_ring_stops_that_socket_only(stack: Stack) -> None:
    with StackClient(stack.path) as app:
        stalled = app.connect((REMOTE, CHARGEN))  # never read
        until(lambda: stalled._channel is not None and stalled._channel.rx_ring.available() > 0)
        echo = app.connect((REMOTE, ECHO))
        data = random.Random(4).randbytes(1_000_000)
        assert echo_roundtrip(echo, data) == data
        channel = stalled._channel
        assert channel is not None
        assert channel.rx_ring.available() == channel.layout.rx.slots  # full, and no more
        assert recv_exactly(stalled, 100_000) == (CHARGEN_BLOCK * 2)[:100_000]  # then resumes


def test_garbage_in_a_ring_resets_only_that_socket(stack: Stack) -> None:
    with StackClient(stack.path) as bad, StackClient(stack.path) as good:
        victim = bad.connect((REMOTE, ECHO))
        sibling = bad.connect((REMOTE, ECHO))
        other = good.connect((REMOTE, ECHO))
        channel = victim._channel
        assert channel is not None
        region = channel.client_region.view
        rng = random.Random(5)
        tx = channel.layout.client_size - channel.layout.tx.producer_size  # TX ring offset
        region[tx + INDEX_LINE : tx + INDEX_LINE + 4096] = rng.randbytes(4096)
        struct.pack_into("II", region, tx + INDEX_LINE, 0xFFFFFFF0, 0)  # a lying length
        struct.pack_into("Q", region, tx, 1)  # publish it
        channel.data_notifier.bell.ring()
        until(lambda: stack.server.stats.corrupt_channels == 1)
        with pytest.raises(OSError) as info:
            victim.recv(10)
        assert info.value.errno == errno.EPROTO
        struct.pack_into("Q", region, tx, 2**63)  # keeps scribbling: nobody listens any more
        channel.data_notifier.bell.ring()
        for sock in (sibling, other):
            data = rng.randbytes(300_000)
            assert echo_roundtrip(sock, data) == data
        victim.close()
    until(lambda: stack.server.socket_count() == 0)


def test_garbage_control_messages_drop_only_that_session(stack: Stack) -> None:
    with StackClient(stack.path) as good:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        raw.connect("\0" + stack.path[1:])
        raw.send(Message(Op.HELLO, arg=VERSION, payload=MAGIC).encode())
        replies = [Message.decode(raw.recv(1000))]
        raw.send(Message(Op.CONNECT, req_id=2, ip=1, port=0).encode())  # port 0
        replies.append(Message.decode(raw.recv(1000)))
        raw.send(Message(Op.ACCEPT, req_id=3, sock_id=12345).encode())  # not its socket
        replies.append(Message.decode(raw.recv(1000)))
        assert [r.status for r in replies] == [0, errno.EINVAL, errno.EBADF]
        rng = random.Random(6)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(40):  # the session is dropped part way through
                raw.send(rng.randbytes(rng.randint(0, 80)))
        until(lambda: stack.server.stats.sessions_dropped >= 1)
        sock = good.connect((REMOTE, ECHO))
        sock.sendall(b"still fine")
        assert sock.recv(100) == b"still fine"
        raw.close()


def test_out_of_fds_fails_one_request(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    import guest.stack.session.server as server_module

    real = server_module.StackChannel

    def exhausted(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    with StackClient(stack.path) as app:
        monkeypatch.setattr(server_module, "StackChannel", exhausted)
        with pytest.raises(OSError) as info:
            app.connect((REMOTE, ECHO))
        assert info.value.errno == errno.EMFILE
        monkeypatch.setattr(server_module, "StackChannel", real)
        sock = app.connect((REMOTE, ECHO))
        sock.sendall(b"recovered")
        assert sock.recv(100) == b"recovered"


# ------------------------------------------------------------------ across processes


def child_client(path: str, mode: str, size: int) -> None:
    """Runs in a child process: an application using the stack."""
    app = StackClient(path)
    if mode == "echo":
        sock = app.connect((REMOTE, ECHO), timeout=5)
        data = random.Random(size).randbytes(size)
        result = {"ok": echo_roundtrip(sock, data) == data}
        sock.shutdown_write()
        result["eof"] = sock.recv(1) == b""
        sock.close()
        result["rescued"] = app.bell_stats.rescued
        print(json.dumps(result), flush=True)
    elif mode == "send":  # to a listener on port `size` in another process
        sock = app.connect(("198.18.0.1", size), timeout=5)
        data = random.Random(9).randbytes(4_000_000)
        sock.sendall(data)
        sock.shutdown_write()
        print(json.dumps({"sha256": hashlib.sha256(data).hexdigest()}), flush=True)
        sock.recv(1)  # wait for the other side's close
    elif mode == "flood":  # stream to discard until killed
        sock = app.connect((REMOTE, DISCARD))
        print(json.dumps({"sock_id": sock.sock_id}), flush=True)
        block = os.urandom(65536)
        while True:
            sock.sendall(block)
    app.close()


def spawn(path: str, mode: str, size: int) -> subprocess.Popen[str]:
    call = f"child_client({path!r}, {mode!r}, {size})"
    code = f"import tests.unit.{Path(__file__).stem} as t; t.{call}"
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def test_echo_from_another_process(stack: Stack) -> None:
    children = [spawn(stack.path, "echo", 2_000_000 + i) for i in range(2)]
    for child in children:
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        assert json.loads(out) == {"ok": True, "eof": True, "rescued": 0}
    until(lambda: stack.server.session_count() == 0 and stack.server.socket_count() == 0)


def test_accept_from_another_process(stack: Stack) -> None:
    with StackClient(stack.path) as app:
        listener = app.listen(5004)
        child = spawn(stack.path, "send", 5004)
        conn, _ = listener.accept(timeout=10)
        digest = hashlib.sha256()
        buf = bytearray(100_000)
        while n := conn.recv_into(buf):
            digest.update(memoryview(buf)[:n])
        conn.close()
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        assert json.loads(out)["sha256"] == digest.hexdigest()


def test_killed_client_leaves_the_server_serving(stack: Stack) -> None:
    child = spawn(stack.path, "flood", 0)
    assert child.stdout is not None
    sock_id = json.loads(child.stdout.readline())["sock_id"]
    until(lambda: stack.backend.stats.discarded.get(sock_id, 0) > 2_000_000, 20)
    with StackClient(stack.path) as app:
        sock = app.connect((REMOTE, ECHO))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        until(lambda: (sock_id, True) in stack.backend.stats.closed)  # aborted in the stack
        assert stack.server.session_count() == 1
        data = random.Random(10).randbytes(500_000)
        assert echo_roundtrip(sock, data) == data
    until(lambda: stack.server.session_count() == 0 and stack.server.socket_count() == 0)


def test_event_loop_api_one_thread_many_sockets(stack: Stack) -> None:
    """connect_start/accept_start/wait_any: one thread drives a listener, a connect and two
    sockets without ever blocking in one of them; readable/writable say when a call would not
    block, and a cancelled connect is still collected (ETIMEDOUT)."""
    with StackClient(stack.path) as server_app, StackClient(stack.path) as client_app:
        listener = server_app.listen(5003)
        accepting = listener.accept_start()
        assert not accepting.done()
        assert not wait_any(pending=[accepting], timeout=0.05)  # nobody connects yet
        connecting = client_app.connect_start(("198.18.0.1", 5003))
        assert wait_any(pending=[accepting, connecting], timeout=5)
        until(lambda: accepting.done() and connecting.done())
        out = connecting.result()
        conn, peer = accepting.result()
        assert peer == out.local
        assert not conn.readable() and out.writable()
        assert not wait_any(readers=[conn], timeout=0.05)
        out.sendall(b"ping")
        assert wait_any(readers=[conn, out], timeout=5)
        assert conn.readable() and not out.readable()
        assert conn.recv(10) == b"ping"
        out.shutdown_write()
        assert wait_any(readers=[conn], timeout=5) and conn.recv(10) == b""  # EOF is readable
        hole = client_app.connect_start((REMOTE, BLACKHOLE))
        assert not wait_any(pending=[hole], timeout=0.05)
        hole.cancel()
        assert wait_any(pending=[hole], timeout=5)
        with pytest.raises(TimeoutError):
            hole.result()
        for sock in (out, conn):
            sock.close()
        listener.close()
    until(lambda: stack.server.socket_count() == 0)


def test_wait_any_sees_the_server_die(stack: Stack) -> None:
    client = StackClient(stack.path)
    sock = client.connect((REMOTE, ECHO))
    threading.Timer(0.1, stack.shut_down).start()
    start = time.monotonic()
    assert wait_any(readers=[sock], timeout=10)
    assert time.monotonic() - start < 5
    with pytest.raises(ConnectionResetError):
        sock.recv(10)
    client.close()

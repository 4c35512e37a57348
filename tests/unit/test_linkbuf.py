"""host.linkbuf against the real kernel: its drop counts and a buffer set in another process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from host import linkbuf

TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout \
inode ref pointer drops
14980: 023A017F:2710 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 \
1657850 2 000000005fe3b643 486
14981: 013A017F:2710 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 \
1657829 2 000000005a75b6a8 0
"""


def test_the_udp_table_gives_inode_and_drops_by_local_address():
    table = linkbuf.parse_udp_table(TABLE)
    assert table == {"023A017F:2710": (1657850, 486), "013A017F:2710": (1657829, 0)}


def test_an_endpoint_is_written_as_the_kernel_writes_it():
    assert linkbuf._proc_form(("127.1.58.2", 10000)) == "023A017F:2710"


def test_an_endpoints_text_reads_back():
    endpoint = ("127.1.58.2", 10000)
    assert linkbuf.parse_endpoint(linkbuf.endpoint_text(endpoint)) == endpoint


def test_drops_are_what_the_kernel_counted_at_a_full_socket():
    """A socket with the smallest buffer, sent more than it can hold without reading: the
    kernel drops the rest, and `drops` reports exactly the shortfall."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
        rx.bind(("127.0.0.1", 0))
        endpoint = rx.getsockname()
        assert linkbuf.drops([endpoint]) == {f"127.0.0.1:{endpoint[1]}": 0}
        for _ in range(50):
            tx.sendto(b"x" * 1400, endpoint)
        rx.setblocking(False)
        received = 0
        while True:
            try:
                rx.recv(2048)
            except BlockingIOError:
                break
            received += 1
        assert 0 < received < 50
        assert linkbuf.drops([endpoint]) == {f"127.0.0.1:{endpoint[1]}": 50 - received}
    finally:
        rx.close()
        tx.close()


def test_an_endpoint_without_a_socket_is_left_out_or_refused():
    nobody = ("127.0.0.1", 9)  # discard: nothing binds it here
    assert linkbuf.drops([nobody]) == {}
    with pytest.raises(linkbuf.LinkBufferError, match=r"no socket bound to 127\.0\.0\.1:9"):
        linkbuf.set_rcvbuf([nobody])


#: A stand-in for QEMU: a process named qemu-* holding a UDP socket, which prints its
#: endpoint, then, each time a line arrives on stdin, the receive buffer the kernel reports.
_FAKE_QEMU = textwrap.dedent(
    """
    import ctypes, socket, sys
    ctypes.CDLL(None).prctl(15, b"qemu-linkbuf", 0, 0, 0)  # PR_SET_NAME
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
    for _ in sys.stdin:
        print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE and pidfd_getfd need root")
def test_the_buffer_is_set_on_the_qemu_process_own_socket():
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAKE_QEMU], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port, before = map(int, proc.stdout.readline().split())
        endpoint = ("127.0.0.1", port)
        granted = linkbuf.set_rcvbuf([endpoint], size=3 * 1024 * 1024)
        proc.stdin.write("?\n")
        proc.stdin.flush()
        seen = int(proc.stdout.readline())
        assert granted == {f"127.0.0.1:{port}": seen}
        assert seen == 2 * 3 * 1024 * 1024 != before  # the kernel doubles what it is asked
    finally:
        proc.kill()
        proc.wait()


def test_a_socket_held_by_no_qemu_process_is_refused():
    """Only a QEMU's sockets are touched: one of this process (not named qemu) is not."""
    mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        mine.bind(("127.0.0.1", 0))
        with pytest.raises(linkbuf.LinkBufferError, match="found QEMU holding none of 1"):
            linkbuf.set_rcvbuf([mine.getsockname()])
    finally:
        mine.close()

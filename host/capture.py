"""Packet capture of one link of a running lab, from the host side: the guests pay nothing.

Mechanism: QEMU's `filter-dump` netfilter, hot-added through QMP (`object-add`) on the netdev
of the link's first endpoint (in the lab's node order), and removed with `object-del`. It sits
behind that node's e1000 in QEMU and writes every frame, in both directions, as a standard
pcap record (linktype EN10MB) that `tcpdump -r` and Wireshark read; the UDP socket carrying
the link is not touched. libvirt names an `<interface>`'s netdev `host` + its alias (`net0`,
...): the interface is found in the live domain XML by its MAC, and its netdev is asked of
QEMU itself (`qom-get ... netdev`), so nothing depends on device order.

Bounds: `snaplen` cuts each frame (filter-dump's `maxlen`); `max_bytes` bounds the file. QEMU
has no file-size bound of its own, so a watcher thread polls the file's size and detaches the
filter when it reaches the bound; the file is then cut back to the last whole record within
`max_bytes`, and the result says the capture stopped early.

Nothing leaks: the file is written as `OUT.part` and renamed only when the capture stopped
cleanly, so a half-written capture never carries the final name. `stop()` is idempotent and
runs on leaving the context manager (an exception, Ctrl-C). A guard process, started with a
pipe on its stdin like the lab's guardian (`python -m host.capture DOMAIN FILTER`), detaches the
filter if the capturing process dies without saying `done` (SIGKILL); the `.part` file stays
as the notice. A filter dies with its domain anyway.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from host.fields import (
    CAPTURE_MAX_BYTES,
    CAPTURE_MIN_BYTES,
    CAPTURE_SNAPLEN,
    CAPTURE_SNAPLEN_RANGE,
)

if TYPE_CHECKING:
    import libvirt

    from host.lab import LabState

DEFAULT_MAX_BYTES = CAPTURE_MAX_BYTES
DEFAULT_SNAPLEN = CAPTURE_SNAPLEN
PCAP_HEADER = 24
RECORD_HEADER = 16
MIN_MAX_BYTES = CAPTURE_MIN_BYTES  # PCAP_HEADER, RECORD_HEADER and one minimum frame
POLL_S = 0.05
FILTER_PREFIX = "sbcap"

_ids = itertools.count()


class CaptureError(RuntimeError):
    pass


@dataclass(frozen=True)
class LinkEnd:
    """The endpoint of a link whose QEMU records the capture."""

    link: str
    node: str
    domain: str
    mac: str


@dataclass(frozen=True)
class CaptureResult:
    path: Path
    link: str
    node: str
    frames: int
    bytes: int  # size of the pcap file
    seconds: float
    bound_reached: bool  # stopped early: the file reached max_bytes
    max_bytes: int
    snaplen: int


def lab_links(state: LabState) -> dict[str, list[LinkEnd]]:
    """Each link of the lab, with its endpoints in the lab's node order."""
    links: dict[str, list[LinkEnd]] = {}
    for node in state.nodes:
        for nic in node.nics:
            links.setdefault(nic["link"], []).append(
                LinkEnd(nic["link"], node.name, node.domain, nic["mac"])
            )
    return links


def link_end(state: LabState, link: str) -> LinkEnd:
    """The endpoint whose QEMU captures `link`; an unknown link names the lab's links."""
    links = lab_links(state)
    if link not in links:
        known = ", ".join(sorted(links)) or "none"
        raise CaptureError(f"lab {state.lab} has no link {link!r} (links: {known})")
    return links[link][0]


@dataclass(frozen=True)
class Bounds:
    """How much a capture keeps: the file's size, and the bytes kept of each frame."""

    max_bytes: int = DEFAULT_MAX_BYTES
    snaplen: int = DEFAULT_SNAPLEN

    def __post_init__(self) -> None:
        if self.max_bytes < MIN_MAX_BYTES:
            raise CaptureError(f"max_bytes must be at least {MIN_MAX_BYTES}, not {self.max_bytes}")
        low, high = CAPTURE_SNAPLEN_RANGE
        if not low <= self.snaplen <= high:
            raise CaptureError(f"snaplen must be between {low} and {high}, not {self.snaplen}")


def pcap_records(data: bytes) -> Iterator[tuple[int, int]]:
    """(offset, end) of each whole record of a pcap file's bytes, in either byte order; a
    record cut short at the end is not yielded."""
    if len(data) < PCAP_HEADER:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise CaptureError(f"not a pcap file (magic {magic.hex()})")
    rec = struct.Struct(order + "IIII")
    off = PCAP_HEADER
    while off + RECORD_HEADER <= len(data):
        _sec, _frac, incl, _orig = rec.unpack_from(data, off)
        end = off + RECORD_HEADER + incl
        if end > len(data):
            return
        yield off, end
        off = end


def whole_prefix(data: bytes, limit: int) -> tuple[int, int]:
    """(frames, size) of the longest prefix of a pcap file that ends on a whole record and
    is at most `limit` bytes long (the header alone if no record fits)."""
    frames, size = 0, min(PCAP_HEADER, len(data))
    for _off, end in pcap_records(data):
        if end > limit:
            break
        frames, size = frames + 1, end
    return frames, size


def pcap_summary(path: Path) -> tuple[int, int]:
    """(frames, bytes) of a pcap file."""
    data = path.read_bytes()
    return sum(1 for _ in pcap_records(data)), len(data)


def _qmp(dom: libvirt.virDomain, command: str, **arguments) -> dict:
    import libvirt_qemu

    msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(msg), 0))
    if "error" in reply:
        raise CaptureError(f"QEMU refused {command}: {reply['error'].get('desc', reply)}")
    return reply.get("return", {})


def interface_alias(domain_xml: str, mac: str) -> str:
    """libvirt's alias of the live domain's interface with this MAC (`net0`, ...)."""
    for iface in ET.fromstring(domain_xml).iter("interface"):
        m, alias = iface.find("mac"), iface.find("alias")
        if m is not None and alias is not None and m.get("address", "").lower() == mac.lower():
            return alias.get("name", "")
    raise CaptureError(f"no interface with MAC {mac} in the running domain")


def netdev_of(dom: libvirt.virDomain, mac: str) -> str:
    """The QEMU netdev behind the domain's NIC with this MAC (`hostnet0`, ...)."""
    alias = interface_alias(dom.XMLDesc(0), mac)
    return _qmp(dom, "qom-get", path=f"/machine/peripheral/{alias}", property="netdev")


def detach(dom: libvirt.virDomain, filter_id: str) -> bool:
    """Remove the filter; False if it was already gone (domain gone, or removed before)."""
    import libvirt

    try:
        _qmp(dom, "object-del", id=filter_id)
    except (CaptureError, libvirt.libvirtError):
        return False
    return True


def default_capture_path(lab: str, link: str) -> Path:
    from host.paths import results_dir

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return results_dir() / "captures" / f"{stamp}-{lab}-{link}.pcap"


class Capture:
    """A capture of one link of a running lab; a context manager (start on enter, stop on
    exit). The link is checked before anything starts."""

    def __init__(self, state: LabState, link: str, out: Path, bounds: Bounds | None = None):
        self.end = link_end(state, link)
        bounds = bounds or Bounds()
        self.out = Path(out).resolve()
        self.part = self.out.with_name(self.out.name + ".part")
        self.max_bytes = bounds.max_bytes
        self.snaplen = bounds.snaplen
        self.filter_id = f"{FILTER_PREFIX}-{os.getpid()}-{next(_ids)}"
        self.result: CaptureResult | None = None
        self.bound_reached = threading.Event()
        self._conn: libvirt.virConnect | None = None
        self._dom: libvirt.virDomain | None = None
        self._guard: subprocess.Popen | None = None
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._attached = False
        self._t0 = 0.0

    def start(self) -> Capture:
        from host.virt import connect

        try:
            self._conn = connect()
            self._dom = self._conn.lookupByName(self.end.domain)
            netdev = netdev_of(self._dom, self.end.mac)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.part.unlink(missing_ok=True)
            self._guard = subprocess.Popen(
                [sys.executable, "-m", "host.capture", self.end.domain, self.filter_id],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            _qmp(
                self._dom,
                "object-add",
                **{
                    "qom-type": "filter-dump",
                    "id": self.filter_id,
                    "netdev": netdev,
                    "queue": "all",
                    "file": str(self.part),
                    "maxlen": self.snaplen,
                },
            )
        except BaseException:
            self._cleanup()
            raise
        self._attached = True
        self._t0 = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, name="capture-bound", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_S):
            try:
                size = self.part.stat().st_size
            except FileNotFoundError:
                continue
            if size >= self.max_bytes:
                self.bound_reached.set()
                self._detach()
                return

    def _detach(self) -> None:
        with self._lock:
            if self._attached and self._dom is not None:
                detach(self._dom, self.filter_id)
            self._attached = False

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as the size bound stopped the capture."""
        return self.bound_reached.wait(seconds)

    def stop(self) -> CaptureResult | None:
        """Detach the filter, cut the file to the bound, give it its final name. Idempotent;
        None if the capture never started."""
        if self.result is not None or self._dom is None:
            return self.result
        self._stopping.set()
        self._detach()
        if self._watcher is not None:
            self._watcher.join()
        seconds = time.monotonic() - self._t0
        try:
            data = self.part.read_bytes()
        except FileNotFoundError as e:
            self._cleanup()
            raise CaptureError(f"QEMU wrote no capture file {self.part}") from e
        frames, size = whole_prefix(data, self.max_bytes)
        if size < len(data):
            os.truncate(self.part, size)
        self.part.replace(self.out)
        self._cleanup()
        self.result = CaptureResult(
            path=self.out,
            link=self.end.link,
            node=self.end.node,
            frames=frames,
            bytes=size,
            seconds=round(seconds, 3),
            bound_reached=self.bound_reached.is_set(),
            max_bytes=self.max_bytes,
            snaplen=self.snaplen,
        )
        return self.result

    def _cleanup(self) -> None:
        """Dismiss the guard (the filter is off) and close the connection."""
        self._detach()
        if self._guard is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._guard.stdin.write(b"done\n")
                self._guard.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._guard.wait(timeout=10)
            self._guard = None
        if self._conn is not None:
            import libvirt

            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
        self._dom = None

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def guard(domain: str, filter_id: str) -> int:
    """Wait for the capturing process to say `done` or die; if it died, detach its filter."""
    said = sys.stdin.buffer.read()
    if said.strip() == b"done":
        return 0
    import libvirt

    from host.virt import connect

    try:
        conn = connect()
        detach(conn.lookupByName(domain), filter_id)
        conn.close()
    except libvirt.libvirtError:
        pass  # the domain is gone, and its filter with it
    return 0


if __name__ == "__main__":
    sys.exit(guard(*sys.argv[1:3]))

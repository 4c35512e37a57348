"""Two labs on one host at once: the 2-node default lab and the 3-node chain, under names of
their own. They must not share a slot or a link socket, their streams must run side by side
without mixing, and tearing one down (cleanly, or by SIGKILLing its owner) must leave the
other running untouched. Everything is checked by the lab's libvirt tag, so a check about
"the other lab" cannot be satisfied by some unrelated domain on the host."""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from guest.traffic import Pattern
from host.accel import accel_for
from host.config import load_lab
from host.lab import Lab, LabState
from host.paths import PROJECT_ROOT, labs_dir, slots_dir
from host.slots import node_loopback
from host.ssh import traffic_command
from host.virt import connect, tagged_domains
from tests.vm.conftest import DEFAULT_CONFIG, start_keeper, unique_lab_name
from tests.vm.leftovers import guardian_processes_of, leftovers, qemu_processes_of, wait_clean
from tests.vm.streams import checked_stream, result

CHAIN_CONFIG = PROJECT_ROOT / "configs" / "chain.yaml"
# Enough for each stream to cross pattern blocks; small enough for five TCG guests on a
# couple of cores.
STREAM_BYTES = 2 * 1_000_003 + 555

Endpoint = tuple[str, int]


# --- what libvirt and the host say about a lab -------------------------------------------


def _running(lab: str) -> dict[str, str]:
    """The lab's active domains, found by their tag: domain name -> UUID (a restarted domain
    gets a new one)."""
    conn = connect()
    try:
        return {
            dom.name(): dom.UUIDString()
            for dom, _ in tagged_domains(conn, lab=lab)
            if dom.isActive()
        }
    finally:
        conn.close()


def _link_sockets(lab: str) -> dict[str, list[tuple[Endpoint, Endpoint]]]:
    """Each of the lab's domains' UDP link NICs as libvirt runs them: (local, remote)."""
    conn = connect()
    try:
        out = {}
        for dom, _ in tagged_domains(conn, lab=lab):
            nics = []
            for iface in ET.fromstring(dom.XMLDesc()).iter("interface"):
                if iface.get("type") != "udp":
                    continue
                src = iface.find("source")
                local = src.find("local")
                nics.append(
                    (
                        (local.get("address"), int(local.get("port"))),
                        (src.get("address"), int(src.get("port"))),
                    )
                )
            out[dom.name()] = nics
        return out
    finally:
        conn.close()


def _bound_udp() -> dict[Endpoint, set[int]]:
    """Every UDP socket bound on the host's 127.1.0.0/16: address -> pids holding it."""
    out = subprocess.run(["ss", "-Hunap"], capture_output=True, text=True, check=True).stdout
    bound: dict[Endpoint, set[int]] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6 or not fields[3].startswith("127.1."):
            continue
        addr, port = fields[3].rsplit(":", 1)
        pids = {int(p.split(",")[0]) for p in fields[5].split("pid=")[1:]}
        bound.setdefault((addr, int(port)), set()).update(pids)
    return bound


def _qemu_pids(lab: str) -> set[int]:
    return {int(line.split()[0]) for line in qemu_processes_of(lab)}


def _slot_holder(number: int) -> str | None:
    """The lab named in a slot's lock file while some process holds its lock, else None.
    (Probing takes the lock for an instant when it is free: a lab allocating then skips it.)"""
    path = slots_dir() / f"{number}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return path.read_text().split()[0]
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _forwarded(lab: Lab) -> int:
    """m's count of forwarded datagrams (Ip: ForwDatagrams in /proc/net/snmp)."""
    text = lab.guest("m").run("cat /proc/net/snmp").check().stdout
    names, values = [line.split() for line in text.splitlines() if line.startswith("Ip:")][:2]
    return int(values[names.index("ForwDatagrams")])


def _server_ip(lab: Lab) -> str:
    """b's address on its link toward a: the a-b link in the default lab, m-b in the chain."""
    link = "m-b" if any(n.name == "m" for n in lab.config.nodes) else "a-b"
    return str(lab.config.link(link).address_of("b").ip)


def _new_lab(config_path: Path, prefix: str) -> Lab:
    config = load_lab(config_path)
    return Lab(config, accel=accel_for(config.image), name=unique_lab_name(prefix), progress=print)


def _up_together(*labs: Lab) -> None:
    """Boot the labs at the same time (each `up` tears its own lab down if it fails)."""
    with ThreadPoolExecutor(max_workers=len(labs)) as pool:
        for future in [pool.submit(lab.up) for lab in labs]:
            future.result()


# --- streams at the same moment ----------------------------------------------------------


@dataclass
class Stream:
    lab: Lab
    seed: int
    port: int = 6301


def _simultaneous_streams(streams: list[Stream], nbytes: int) -> None:
    """Start every sink, then every source, then check each stream byte for byte; and that
    no stream had finished before the last source was started, so they ran together."""

    def sink_done(receiver) -> tuple[dict, float]:
        received = result(receiver.wait(timeout=180))
        return received, time.monotonic()

    receivers, senders, launched = [], [], []
    for s in streams:
        ip = _server_ip(s.lab)
        receivers.append(
            s.lab.guest("b").start(
                traffic_command("sink", f"--path kernel --bind {ip} --port {s.port}")
            )
        )
    for s in streams:
        ip = _server_ip(s.lab)
        send = f"--peer {ip} --port {s.port} --bytes {nbytes} --seed {s.seed} --msg-size 50000"
        senders.append(
            s.lab.guest("a").start(
                traffic_command("source", f"--path kernel {send} --connect-timeout 60")
            )
        )
        launched.append(time.monotonic())
    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        done = list(pool.map(sink_done, receivers))
    sent = [result(sender.wait(timeout=180)) for sender in senders]
    for s, (received, _), source in zip(streams, done, sent, strict=True):
        expected = hashlib.sha256(bytes(Pattern(s.seed, nbytes).window(0, nbytes))).hexdigest()
        assert source["bytes"] == received["bytes"] == nbytes, s.lab.name
        # Different seeds per lab: a segment crossing into the other lab's stream would show.
        assert source["sha256"] == received["sha256"] == expected, s.lab.name
    first_done = min(t for _, t in done)
    assert max(launched) < first_done, "a stream ended before the other one was started"


# --- 1 and 2: a default lab and a chain side by side, then the default lab down ----------


@pytest.fixture(scope="class")
def side_by_side():
    """A default lab and a chain lab, booted at the same time; both down when the class ends
    (down() is idempotent, so a test may take one down first)."""
    default, chain = _new_lab(DEFAULT_CONFIG, "t2d"), _new_lab(CHAIN_CONFIG, "t2c")
    with default, chain:
        _up_together(default, chain)
        yield default, chain


class TestSideBySide:
    def test_both_up_on_their_own_slots_and_sockets_streaming_at_once(self, side_by_side):
        """Two labs up at once hold different slots, so every host address they bind differs;
        check that libvirt runs each lab's NICs on its own slot's loopback addresses, that
        each of those sockets is held by that lab's QEMU only, and that a kernel stream in
        each lab (the chain's across m) runs at the same moment as the other, byte-exact."""
        default, chain = side_by_side
        slots = {lab.name: lab.state.slot for lab in side_by_side}
        assert slots[default.name] != slots[chain.name], slots
        for lab in side_by_side:
            assert _slot_holder(lab.state.slot) == lab.name

        bound = _bound_udp()
        pids = {lab.name: _qemu_pids(lab.name) for lab in side_by_side}
        assert len(pids[default.name]) == 2 and len(pids[chain.name]) == 3, pids
        assert not pids[default.name] & pids[chain.name]
        endpoints: dict[str, set[Endpoint]] = {}
        for lab in side_by_side:
            sockets = _link_sockets(lab.name)
            assert sorted(sockets) == sorted(n.domain for n in lab.state.nodes)
            own = {node_loopback(lab.state.slot, i) for i in range(len(lab.config.nodes))}
            mine = endpoints.setdefault(lab.name, set())
            for local, remote in (nic for nics in sockets.values() for nic in nics):
                assert local[0] in own and remote[0] in own, (lab.name, local, remote)
                assert bound.get(local) and bound[local] <= pids[lab.name], (local, bound)
                mine.add(local)
            # one socket per link end: 1 link in the default lab, 2 in the chain
            assert len(mine) == 2 * len(lab.config.links)
        assert not endpoints[default.name] & endpoints[chain.name]

        before = _forwarded(chain)
        _simultaneous_streams([Stream(default, seed=11), Stream(chain, seed=12)], STREAM_BYTES)
        # the chain's stream went through m (at least one datagram per 64 KiB, GRO-merged)
        assert _forwarded(chain) - before >= STREAM_BYTES // 65536

    def test_default_down_leaves_the_chain_running(self, side_by_side):
        """Bringing the default lab down removes everything of its own (domains, QEMU
        processes, SSH ports, link sockets, run folder, guardian, slot) and keeps its console
        logs (artifacts, as for any lab.down); the chain keeps the very same domains (same
        UUIDs: not restarted), its state, its slot and its sockets, and still forwards a
        byte-exact stream from a to b through m."""
        default, chain = side_by_side
        chain_domains = _running(chain.name)
        assert sorted(chain_domains) == sorted(n.domain for n in chain.state.nodes)
        assert sorted(_running(default.name)) == sorted(n.domain for n in default.state.nodes)
        state = default.state
        ports = [n.ssh_port for n in state.nodes]
        links = {nic[0] for nics in _link_sockets(default.name).values() for nic in nics}
        chain_links = {nic[0] for nics in _link_sockets(chain.name).values() for nic in nics}
        assert links and chain_links

        default.down()

        assert leftovers(default.name, ports, state.run_dir) == {}
        assert not (labs_dir() / default.name).exists()
        assert _slot_holder(state.slot) is None
        assert not links & set(_bound_udp())
        assert all(os.path.exists(n.console_log) for n in state.nodes)

        assert _running(chain.name) == chain_domains
        kept = LabState.load(chain.name)
        assert kept is not None and kept.run_id == chain.state.run_id
        assert Path(kept.run_dir, "a.qcow2").exists()
        assert guardian_processes_of(kept.run_dir)
        assert _slot_holder(chain.state.slot) == chain.name
        bound = _bound_udp()
        assert all(bound.get(e) and bound[e] <= _qemu_pids(chain.name) for e in chain_links)
        before = _forwarded(chain)
        checked_stream(
            chain.guest("a"), chain.guest("b"), _server_ip(chain), 6302, STREAM_BYTES, seed=13
        )
        assert _forwarded(chain) - before >= STREAM_BYTES // 65536


# --- 3: a chain's owner SIGKILLed while a default lab runs -------------------------------


def _start_chain_keeper(name: str) -> tuple[subprocess.Popen, queue.Queue]:
    """A chain lab owner in its own process, and a queue of its output lines (None at EOF)."""
    keeper = start_keeper(CHAIN_CONFIG, name)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in keeper.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return keeper, lines


def _wait_ready(lines: queue.Queue, timeout: float) -> str:
    """The keeper's READY or FAILED line; everything it said if neither came in time."""
    said = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        said.append(line)
        if line.startswith(("READY", "FAILED")):
            return line
    return "".join(said) or "(nothing)"


def test_sigkilled_chain_owner_leaves_the_other_lab_running():
    """A chain owned by a keeper process, a default lab owned by this process, both booted
    together. SIGKILL the keeper: no code of its own runs, libvirt's AUTODESTROY and the
    chain's guardian must remove the chain (domains, QEMU, ports, link sockets, run folder,
    guardian, slot) within a bounded wait, and must not touch the default lab, which keeps
    the same domains, state and guardian and still carries a byte-exact stream."""
    chain_name = unique_lab_name("t2k")
    other = _new_lab(DEFAULT_CONFIG, "t2o")
    keeper, lines = _start_chain_keeper(chain_name)
    try:
        with other:
            other.up()
            said = _wait_ready(lines, timeout=240)
            assert said.startswith("READY"), said
            chain = LabState.load(chain_name)
            assert chain is not None and chain.owner_pid == keeper.pid
            assert chain.slot != other.state.slot
            assert sorted(_running(chain_name)) == sorted(n.domain for n in chain.nodes)
            assert _slot_holder(chain.slot) == chain_name
            ports = [n.ssh_port for n in chain.nodes]
            links = {nic[0] for nics in _link_sockets(chain_name).values() for nic in nics}
            assert len(links) == 4 and links <= set(_bound_udp())
            other_domains = _running(other.name)
            assert sorted(other_domains) == sorted(n.domain for n in other.state.nodes)

            os.kill(keeper.pid, signal.SIGKILL)
            keeper.wait(timeout=30)
            t0 = time.monotonic()
            left = wait_clean(chain_name, ports, chain.run_dir, timeout=60)
            print(f"chain gone {time.monotonic() - t0:.1f} s after SIGKILL")
            assert left == {}
            assert _slot_holder(chain.slot) is None
            assert not links & set(_bound_udp())
            assert all(os.path.exists(n.console_log) for n in chain.nodes)  # kept, as always

            assert _running(other.name) == other_domains
            kept = LabState.load(other.name)
            assert kept is not None and kept.run_id == other.state.run_id
            assert kept.owner_pid == os.getpid()
            assert guardian_processes_of(kept.run_dir)
            assert _slot_holder(other.state.slot) == other.name
            checked_stream(
                other.guest("a"),
                other.guest("b"),
                _server_ip(other),
                6303,
                STREAM_BYTES,
                seed=14,
            )
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait(timeout=30)

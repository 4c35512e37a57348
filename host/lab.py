"""A lab's life: bring its nodes up, hand out SSH sessions, tear everything down.

The process that calls `Lab.up()` owns the lab: its libvirt connection created the domains with
AUTODESTROY, so the domains die with it, and its guardian removes the files it made. `down()`,
an exception, Ctrl-C or SIGTERM all lead to the same teardown; SIGKILL leads to libvirt's and the
guardian's. A lab that should outlive a command is owned by a keeper process (`host.keeper`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import libvirt

from host import linkbuf
from host.config import LabConfig
from host.domain import Nic, NodeSpec, domain_xml
from host.guardian import Guardian
from host.image import Image, build_image, cached_image
from host.impairments import LinkImpair, Netem, netem_command
from host.paths import console_log_dir, labs_dir
from host.slots import Slot, allocate_slot, link_port, node_loopback, ssh_port
from host.ssh import GUEST_DIR, Guest, generate_key
from host.virt import connect, destroy_domain

Progress = Callable[[str], None]


class LabError(RuntimeError):
    pass


def _mac(prefix: int, slot: int, node: int, nic: int) -> str:
    """Deterministic locally administered MACs: 52:54:00 (QEMU's) : kind : slot/node/nic."""
    return f"52:54:{prefix:02x}:{slot:02x}:{node:02x}:{nic:02x}"


@dataclass
class NodeState:
    name: str
    domain: str
    ssh_port: int
    console_log: str
    vcpus: int
    memory_mib: int
    nics: list[dict] = field(default_factory=list)
    cpuset: str | None = None  # host CPUs it is pinned to; None: unpinned
    boot_seconds: float | None = None
    #: Static routes set at bring-up (host.routing): subnet, via, link, dev.
    routes: list[dict] = field(default_factory=list)
    forwarding: bool = False  # IP forwarding on: some route's next hop
    #: netem set at bring-up on this node's egress (host.impairments): link, dev, fields.
    impairments: list[dict] = field(default_factory=list)


@dataclass
class LabState:
    """What `lab.status`, `lab.ssh` and `bench` need to find a running lab (state.json)."""

    lab: str
    run_id: str
    slot: int
    accel: str
    image: str
    image_digest: str
    run_dir: str
    key_path: str
    owner_pid: int
    config_path: str | None
    created: float
    nodes: list[NodeState]
    guest_kernel: str | None = None
    #: Receive buffer of the links' host sockets (host.linkbuf); None: the host's default.
    link_rcvbuf: int | None = None

    def save(self) -> None:
        path = Path(self.run_dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, lab: str) -> LabState | None:
        path = labs_dir() / lab / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["nodes"] = [NodeState(**n) for n in data["nodes"]]
        return cls(**data)

    def owner_alive(self) -> bool:
        try:
            os.kill(self.owner_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(
            f"lab {self.lab} has no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})"
        )

    def guest(self, name: str) -> Guest:
        n = self.node(name)
        return Guest(n.name, n.ssh_port, Path(self.key_path))


def route_commands(node: NodeState) -> str:
    """The shell command that sets a node's routes and, if it forwards, turns forwarding on."""
    commands = [
        f"ip route replace {r['subnet']} via {r['via']} dev {r['dev']}" for r in node.routes
    ]
    if node.forwarding:
        commands.append("sysctl -qw net.ipv4.ip_forward=1")
    return " && ".join(commands) or "true"


#: How long a NIC may take to come back after `ethtool -K rx on` resets it (an e1000's
#: watchdog sees the link up ~2 s later).
NIC_RESET_TIMEOUT_S = 15


def rx_checksum_command(devs: list[str]) -> str:
    """The shell command that turns receive checksum offload on for `devs`, waiting for each
    one it switched to come back (`guest.tools.nic`).

    Linux leaves it off on an e1000, and switching it resets the NIC. A user-level stack with
    offloads wants it on; switched there and back in every run, the link went down for 2 s at
    each start (its ARP requests and SYN lost) and end (the next run's). On from bring-up, for
    every path alike, nothing switches it again (guest.stack.device.setup.KEPT_ON)."""
    if not devs:
        return "true"
    return (
        f"cd {GUEST_DIR} && exec python3 -m guest.tools.nic {' '.join(devs)} "
        f"--timeout {NIC_RESET_TIMEOUT_S}"
    )


#: Overrides how long guests may take to reach SSH, in seconds: for a host slower than ours,
#: and for the tests that prove a guest that never answers is reported as a fault.
BOOT_TIMEOUT_ENV = "STACKBED_BOOT_TIMEOUT_S"


def boot_timeout(accel: str, nodes: int) -> float:
    """Generous: under TCG a guest needs ~5 s alone, and guests share the host's cores."""
    if text := os.environ.get(BOOT_TIMEOUT_ENV, "").strip():
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not 0 < value <= 3600:
            raise LabError(f"{BOOT_TIMEOUT_ENV}={text!r}: expected seconds, more than 0")
        return value
    return (30.0 if accel == "kvm" else 90.0) + 15.0 * max(0, nodes - 2)


class Lab:
    """Bring up a lab from a validated config; use as a context manager for guaranteed teardown."""

    def __init__(
        self,
        config: LabConfig,
        *,
        accel: str,
        name: str | None = None,
        progress: Progress = print,
    ):
        self.config = config
        self.name = name or config.lab
        self.accel = accel  # the caller decides (host.accel): a lab never probes for itself
        self.progress = progress
        self.state: LabState | None = None
        self.image: Image | None = None
        self._conn: libvirt.virConnect | None = None
        self._slot: Slot | None = None
        self._guardian: Guardian | None = None
        self._domains: dict[str, libvirt.virDomain] = {}
        self._guests: dict[str, Guest] = {}
        self._run_dir: Path | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()  # set by down(): boot waits still running give up

    # --- bring-up -------------------------------------------------------------------------

    def _claim_run_dir(self) -> Path:
        run_dir = labs_dir() / self.name
        old = LabState.load(self.name)
        if old is not None and old.owner_alive():
            raise LabError(
                f"lab {self.name!r} is already running (owner pid {old.owner_pid}); "
                f"`invoke lab.down --name {self.name}` stops it"
            )
        if run_dir.exists():
            shutil.rmtree(run_dir)  # left by an owner that died: nothing in it is alive
        run_dir.mkdir(parents=True, mode=0o700)
        return run_dir

    def _node_specs(self, slot: int, accel: str, pubkey: str) -> list[NodeSpec]:
        assert self.image is not None and self._run_dir is not None
        index = {n.name: i for i, n in enumerate(self.config.nodes)}
        nics: dict[str, list[Nic]] = {n.name: [] for n in self.config.nodes}
        for li, link in enumerate(self.config.links):
            a, b = link.endpoints
            for end, (me, peer) in enumerate(((a, b), (b, a))):
                k = len(nics[me]) + 1
                nics[me].append(
                    Nic(
                        name=f"eth{k}",
                        mac=_mac(1, slot, index[me], k),
                        model=link.model,
                        mtu=link.mtu,
                        address=str(link.addresses[end]),
                        local=(node_loopback(slot, index[me]), link_port(li)),
                        remote=(node_loopback(slot, index[peer]), link_port(li)),
                        link=link.name,
                    )
                )
        logs = console_log_dir(self.name)
        logs.mkdir(parents=True, exist_ok=True)
        specs = []
        for i, node in enumerate(self.config.nodes):
            specs.append(
                NodeSpec(
                    lab=self.name,
                    run_id=self.state.run_id if self.state else "",
                    node=node.name,
                    domain_name=f"sb-{self.name}-{node.name}",
                    accel=accel,
                    vcpus=node.vcpus,
                    memory_mib=node.memory_mib,
                    cpuset=node.cpuset,
                    kernel=str(self.image.kernel),
                    initrd=str(self.image.initrd),
                    disk=str(self._run_dir / f"{node.name}.qcow2"),
                    console_log=str(logs / f"{node.name}.console.log"),
                    ssh_port=ssh_port(slot, i),
                    mgmt_mac=_mac(0, slot, i, 0),
                    ssh_pubkey_b64=pubkey,
                    nics=nics[node.name],
                )
            )
        return specs

    def up(self) -> LabState:
        """Start every node and wait until each runs commands; on any failure, tear down."""
        try:
            return self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> LabState:
        t0 = time.monotonic()
        self.image = cached_image(self.config.image) or build_image(
            self.config.image, progress=self.progress
        )
        self._conn = connect()
        accel = self.accel
        self._slot = allocate_slot(self.name, len(self.config.nodes))
        self._run_dir = self._claim_run_dir()
        run_id = uuid.uuid4().hex[:12]
        self._guardian = Guardian(self._run_dir, run_id, self._slot.path)
        key_path = self._run_dir / "id_ed25519"
        pubkey = generate_key(key_path)
        self.state = LabState(
            lab=self.name,
            run_id=run_id,
            slot=self._slot.number,
            accel=accel,
            image=self.image.name,
            image_digest=self.image.digest,
            run_dir=str(self._run_dir),
            key_path=str(key_path),
            owner_pid=os.getpid(),
            config_path=self.config.source_path,
            created=time.time(),
            nodes=[],
        )
        specs = self._node_specs(self._slot.number, accel, pubkey)
        for spec in specs:
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "raw",
                    "-b",
                    str(self.image.rootfs),
                    spec.disk,
                ],
                check=True,
            )
            self.state.nodes.append(
                NodeState(
                    name=spec.node,
                    domain=spec.domain_name,
                    ssh_port=spec.ssh_port,
                    console_log=spec.console_log,
                    vcpus=spec.vcpus,
                    memory_mib=spec.memory_mib,
                    cpuset=spec.cpuset,
                    nics=[
                        {
                            "name": n.name,
                            "link": n.link,
                            "address": n.address,
                            "mac": n.mac,
                            "model": n.model,
                            "mtu": n.mtu,
                            "udp": linkbuf.endpoint_text(n.local),
                        }
                        for n in spec.nics
                    ],
                )
            )
        self.state.save()
        self.progress(
            f"lab {self.name}: starting {len(specs)} node(s) on {accel.upper()} "
            f"(slot {self._slot.number})"
        )
        started: dict[str, float] = {}
        for spec in specs:
            with self._lock:
                self._domains[spec.node] = self._conn.createXML(
                    domain_xml(spec), libvirt.VIR_DOMAIN_START_AUTODESTROY
                )
            started[spec.node] = time.monotonic()
        self._enlarge_link_buffers([n.local for spec in specs for n in spec.nics])
        deadline = time.monotonic() + boot_timeout(accel, len(specs))

        def ready(node: NodeState) -> None:
            guest = self.state.guest(node.name)
            guest.wait_ready(deadline, Path(node.console_log), cancel=self._cancel)
            node.boot_seconds = round(time.monotonic() - started[node.name], 2)
            self._guests[node.name] = guest
            self.progress(
                f"  {node.name}: SSH ready in {node.boot_seconds:.1f} s (127.0.0.1:{node.ssh_port})"
            )
            guest.deploy()

        self._parallel(ready, self.state.nodes)
        self._rx_checksums()
        self._route()
        self._impair()
        uname = self._guests[self.state.nodes[0].name].run("uname -r").check()
        self.state.guest_kernel = uname.stdout.strip()
        self.state.save()
        self.progress(f"lab {self.name} up in {time.monotonic() - t0:.1f} s")
        return self.state

    def _enlarge_link_buffers(self, endpoints: list[tuple[str, int]]) -> None:
        """Room in the links' host sockets for what a TCG guest cannot drain at once
        (host.linkbuf); without it the link drops frames the lab file does not ask for, so
        say so, and every run still records the drops."""
        assert self.state is not None
        if not endpoints:
            return
        try:
            granted = linkbuf.set_rcvbuf(endpoints)
        except linkbuf.LinkBufferError as exc:
            self.progress(
                f"lab {self.name}: link buffers left at the host's default ({exc}); the links "
                "may drop frames under load (each run records its link_drops)"
            )
            return
        self.state.link_rcvbuf = min(granted.values())
        self.state.save()

    def _rx_checksums(self) -> None:
        """Receive checksum offload on for every experiment NIC (`rx_checksum_command`):
        one SSH command per node, all nodes at once."""
        assert self.state is not None

        def apply(node: NodeState) -> None:
            devs = [nic["name"] for nic in node.nics]
            self.guest(node.name).run(rx_checksum_command(devs)).check()

        self._parallel(apply, self.state.nodes)

    def _route(self) -> None:
        """Give each node its static routes and turn forwarding on where routes lead through
        it (host.routing): one SSH command per node, all nodes at once."""
        assert self.state is not None
        routing = self.config.routes()
        for node in self.state.nodes:
            dev = {nic["link"]: nic["name"] for nic in node.nics}
            node.routes = [{**r.as_dict(), "dev": dev[r.link]} for r in routing.routes[node.name]]
            node.forwarding = node.name in routing.forwarding
        self.state.save()

        def apply(node: NodeState) -> None:
            self.guest(node.name).run(route_commands(node)).check()

        todo = [n for n in self.state.nodes if n.routes or n.forwarding]
        self._parallel(apply, todo)
        if todo:
            count = sum(len(n.routes) for n in todo)
            forwarding = ", ".join(n.name for n in todo if n.forwarding) or "none"
            self.progress(f"  routes: {count} set; forwarding on {forwarding}")

    def _impair(self) -> None:
        """Put each link's impairments on its senders' egress: one SSH command per node."""
        assert self.state is not None
        links = {link.name: link.impair for link in self.config.links if link.impair}
        for node, entries in set_impairments(self.state, self.guest, links).items():
            self.state.node(node).impairments = entries
        self.state.save()
        if links:
            self.progress(f"  impairments: netem on {', '.join(links)}")

    @staticmethod
    def _parallel(fn: Callable, items: list) -> None:
        """Run fn over items in threads; re-raise the first failure after all have finished.

        An interrupt while waiting must not join the workers (a `with` block would): the
        caller's teardown has to run first, which is what makes the workers stop.
        """
        if not items:
            return
        pool = ThreadPoolExecutor(max_workers=min(16, len(items)))
        try:
            futures = [pool.submit(fn, item) for item in items]
            wait(futures)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]

    # --- use ------------------------------------------------------------------------------

    def guest(self, name: str) -> Guest:
        if name not in self._guests:
            raise LabError(f"node {name!r} is not up in lab {self.name}")
        return self._guests[name]

    # --- teardown -------------------------------------------------------------------------

    def down(self) -> None:
        """Destroy every domain (in parallel: each takes 1-2 s here), then remove every file."""
        self._cancel.set()
        for guest in self._guests.values():
            guest.close()
        self._guests.clear()
        with self._lock:
            domains = list(self._domains.values())
            self._domains.clear()
        try:
            self._parallel(destroy_domain, domains)
        finally:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
            if self._guardian is not None:
                self._guardian.dismiss()
                self._guardian = None
            if self._slot is not None:
                self._slot.release()
                self._slot = None

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        # Teardown must not be cut short by a second Ctrl-C or a SIGTERM.
        old = (
            {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            if threading.current_thread() is threading.main_thread()
            else {}
        )
        try:
            self.down()
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def terminate_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so that `with Lab(...)` tears down on either.

    SIGINT's handler is installed explicitly too: a process started from a background job of a
    non-interactive shell inherits SIGINT ignored, Python keeps it ignored, and a lab owner
    that ignores Ctrl-C would leave its lab running.
    """

    def handler(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def impairment_plan(
    state: LabState, links: dict[str, LinkImpair | None]
) -> dict[str, tuple[str, list[dict]]]:
    """For each node with a NIC on one of `links`: the shell command that puts what it sends
    there under netem (each link's `impair:`, the node's direction; None: no impairment, the
    default qdisc), and what that sets (link, dev and netem's fields)."""
    plan = {}
    for node in state.nodes:
        commands, entries = [], []
        for nic in node.nics:
            if nic["link"] not in links:
                continue
            impair = links[nic["link"]]
            netem = impair.direction(node.name) if impair else Netem()
            commands.append(netem_command(nic["name"], netem))
            entries.append({"link": nic["link"], "dev": nic["name"], **netem.given()})
        if commands:
            plan[node.name] = (" && ".join(commands), entries)
    return plan


def set_impairments(
    state: LabState, guest: Callable[[str], Guest], links: dict[str, LinkImpair | None]
) -> dict[str, list[dict]]:
    """Apply `links`' impairments (see impairment_plan) on every node concerned, all at once;
    return what each node now has on those links."""
    plan = impairment_plan(state, links)

    def apply(node: str) -> None:
        guest(node).run(plan[node][0]).check()

    Lab._parallel(apply, list(plan))
    return {node: entries for node, (_, entries) in plan.items()}

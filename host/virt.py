"""The libvirt connection: one event loop, keep-alive, and the tag that marks our domains.

libvirt's keep-alive and lifecycle events need an event loop registered before the connection is
opened; one daemon thread runs it for the whole process (as LISA does).
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from host.daemons import LIBVIRT_URI, ensure_daemons, fix_kvm_device
from host.domain import METADATA_NS

_loop_lock = threading.Lock()
_loop_started = False


def _silence(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we raise them as exceptions instead."""


def _start_event_loop() -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(_silence, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def connect(uri: str = LIBVIRT_URI) -> libvirt.virConnect:
    """Open the libvirt connection, starting the daemons and fixing /dev/kvm first if needed."""
    ensure_daemons()
    fix_kvm_device()
    _start_event_loop()
    conn = libvirt.open(uri)
    conn.setKeepAlive(5, 3)
    return conn


@dataclass(frozen=True)
class Tag:
    lab: str
    run: str
    node: str


def domain_tag(dom: libvirt.virDomain) -> Tag | None:
    """The stackbed tag in a domain's <metadata>, or None for domains that are not ours."""
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
    except libvirt.libvirtError:
        return None
    el = ET.fromstring(xml)
    return Tag(el.get("name", ""), el.get("run", ""), el.get("node", ""))


def tagged_domains(
    conn: libvirt.virConnect, lab: str | None = None, run: str | None = None
) -> list[tuple[libvirt.virDomain, Tag]]:
    out = []
    for dom in conn.listAllDomains():
        tag = domain_tag(dom)
        if tag and (lab is None or tag.lab == lab) and (run is None or tag.run == run):
            out.append((dom, tag))
    return out


def destroy_domain(dom: libvirt.virDomain) -> None:
    """Destroy (and undefine, for a persistent one); a domain already gone is not an error."""
    try:
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise

"""libvirt domain XML for one stackbed node.

What every node gets, and why:
- direct kernel boot of the image's vmlinux + initramfs (no bootloader, seconds saved under TCG);
- a qcow2 overlay of the shared root image, so guests never write the cached image;
- a management NIC on QEMU user networking with `restrict=on` and SSH forwarded to 127.0.0.1
  (passt is refused by libvirt 9.0; user networking needs no root, bridge or tap). Its range is set
  inside 198.18.0.0/15 so that no other address appears anywhere;
- one NIC per link (e1000 by default) as a UDP socket netdev between two loopback endpoints;
- the serial console logged to a file by virtlogd from the first byte;
- a `<metadata>` tag naming the lab and run, which is what `lab.sweep` looks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

METADATA_NS = "https://stackbed.invalid/xmlns/lab/1"
METADATA_PREFIX = "stackbed"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

# Management network inside each guest's own user-mode network (one per QEMU process).
MGMT_NET = "198.19.255.0/24"
MGMT_HOST = "198.19.255.2"
MGMT_GUEST = "198.19.255.15"
MGMT_PREFIX = 24

BASE_CMDLINE = (
    "console=ttyS0 panic=-1 mitigations=off cryptomgr.notests tsc=reliable no_timer_check "
    "audit=0 quiet loglevel=4 net.ifnames=0 random.trust_cpu=on ipv6.disable=1"
)


@dataclass(frozen=True)
class Nic:
    """An experiment NIC: a UDP socket between two loopback endpoints."""

    name: str  # interface name inside the guest (eth1, eth2, ...)
    mac: str
    model: str
    mtu: int
    address: str  # CIDR, or "none"
    local: tuple[str, int]
    remote: tuple[str, int]
    link: str


@dataclass(frozen=True)
class NodeSpec:
    lab: str
    run_id: str
    node: str
    domain_name: str
    accel: str  # "kvm" or "tcg"
    vcpus: int
    memory_mib: int
    cpuset: str | None  # host CPUs for the vCPUs and QEMU's own threads; None: unpinned
    kernel: str
    initrd: str
    disk: str
    console_log: str
    ssh_port: int
    mgmt_mac: str
    ssh_pubkey_b64: str
    nics: list[Nic] = field(default_factory=list)


def kernel_cmdline(spec: NodeSpec) -> str:
    ifs = "+".join(f"{n.mac},{n.name},{n.address},{n.mtu}" for n in spec.nics)
    parts = [
        BASE_CMDLINE,
        f"stackbed.host={spec.node}",
        f"stackbed.mgmt={spec.mgmt_mac},{MGMT_GUEST}/{MGMT_PREFIX}",
        f"stackbed.key={spec.ssh_pubkey_b64}",
    ]
    if ifs:
        parts.append(f"stackbed.if={ifs}")
    return " ".join(parts)


def _nic_xml(nic: Nic, slot: int) -> str:
    return f"""
    <interface type='udp'>
      <mac address='{nic.mac}'/>
      <source address='{nic.remote[0]}' port='{nic.remote[1]}'>
        <local address='{nic.local[0]}' port='{nic.local[1]}'/>
      </source>
      <model type='{nic.model}'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' function='0x0'/>
    </interface>"""


def _vcpu_xml(spec: NodeSpec) -> str:
    """libvirt pins the vCPU threads and the emulator's to `cpuset` when one is given."""
    if spec.cpuset is None:
        return f"<vcpu>{spec.vcpus}</vcpu>"
    return f"<vcpu placement='static' cpuset='{spec.cpuset}'>{spec.vcpus}</vcpu>"


def domain_xml(spec: NodeSpec) -> str:
    """The full domain definition; `accel` picks libvirt's domain type (kvm, or qemu for TCG)."""
    dom_type = "kvm" if spec.accel == "kvm" else "qemu"
    cpu = "<cpu mode='host-passthrough'/>" if spec.accel == "kvm" else "<cpu mode='maximum'/>"
    nics = "".join(_nic_xml(n, 0x08 + i) for i, n in enumerate(spec.nics))
    netdev = (
        f"user,id=mgmt,restrict=on,net={MGMT_NET},host={MGMT_HOST},dhcpstart={MGMT_GUEST},"
        f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-{MGMT_GUEST}:22"
    )
    device = f"virtio-net-pci,netdev=mgmt,mac={spec.mgmt_mac},bus=pci.0,addr=0x1f"
    meta = (
        f"<{METADATA_PREFIX}:lab xmlns:{METADATA_PREFIX}='{METADATA_NS}' "
        f"name={quoteattr(spec.lab)} run={quoteattr(spec.run_id)} "
        f"node={quoteattr(spec.node)}/>"
    )
    return f"""<domain type='{dom_type}' xmlns:qemu='{QEMU_NS}'>
  <name>{escape(spec.domain_name)}</name>
  <metadata>{meta}</metadata>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  {_vcpu_xml(spec)}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(spec.kernel)}</kernel>
    <initrd>{escape(spec.initrd)}</initrd>
    <cmdline>{escape(kernel_cmdline(spec))}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file={quoteattr(spec.disk)}/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </disk>{nics}
    <serial type='pty'>
      <log file={quoteattr(spec.console_log)} append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x06' function='0x0'/>
    </rng>
    <memballoon model='none'/>
    <video><model type='none'/></video>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value={quoteattr(netdev)}/>
    <qemu:arg value='-device'/>
    <qemu:arg value={quoteattr(device)}/>
  </qemu:commandline>
</domain>
"""

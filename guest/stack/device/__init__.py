"""The NIC from user level: AF_PACKET devices the stack's event loop reads and writes.

* `base.py`: the `Device` protocol (and the frame lifetime rule) plus `DeviceStats`;
* `packet.py`: `PacketDevice`, a plain AF_PACKET socket (one syscall per frame);
* `ring.py`: `RingDevice`, PACKET_MMAP TPACKET_V3/V2 rings (no copy on receive, one syscall
  per transmitted batch);
* `setup.py`: `take_over()` an interface from the kernel's IPv4 stack, and give it back;
* `kinds.py`: the registry of device kinds by name (`DEVICE_KINDS`, `open_device`);
* `abi.py`: the kernel constants and struct layouts the above use;

The virtio_net_hdr that PACKET_VNET_HDR puts in front of frames (TSO/GSO, checksum offload,
GRO) is a frame format, so its codec is `wire.vnet`: the forwarding engine reads it too.

Import the module you need (`from guest.stack.device.ring import RingDevice`): the package
imports nothing itself, so naming a device kind (`kinds`) stays cheap for a command line.
Beside the layers: the namespace helpers (`guest.testing.netns`), the test worker
(`guest.tools.probe`) and the benchmark (`guest.bench.device`).
"""

"""The NIC from user level: AF_PACKET devices the stack's event loop reads and writes.

* `base.py`: the `Device` protocol (and the frame lifetime rule) plus `DeviceStats`;
* `packet.py`: `PacketDevice`, a plain AF_PACKET socket (one syscall per frame);
* `ring.py`: `RingDevice`, PACKET_MMAP TPACKET_V3/V2 rings (no copy on receive, one syscall
  per transmitted batch);
* `vnet.py`: the virtio_net_hdr codec for PACKET_VNET_HDR (TSO/GSO, checksum offload, GRO);
* `setup.py`: `take_over()` an interface from the kernel's IPv4 stack, and give it back;
* `kinds.py`: the registry of device kinds by name (`DEVICE_KINDS`, `open_device`);
* `abi.py`: the kernel constants and struct layouts the above use;

Import the module you need (`from guest.stack.device.ring import RingDevice`): the package
imports nothing itself, so naming a device kind (`kinds`) stays cheap for a command line.
Beside the layers: the namespace helpers (`guest.testing.netns`), the test worker
(`guest.tools.probe`) and the benchmark (`guest.bench.device`).
"""

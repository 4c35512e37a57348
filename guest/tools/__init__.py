"""Programs a user runs on a link, beside the stack rather than inside it.

Each is run by name, `python3 -m guest.tools.NAME`, in a namespace, on a host or in a guest
(the host deploys the whole `guest/` tree into the VMs):

* `relay`: a user-space impairment relay between two interfaces (loss, duplication,
  corruption, reordering, delay) for kernels without netem; its model is the simulators' own,
  `guest.testing.impairment`;
* `probe`: sends or counts test frames on one interface with a chosen device kind, the worker
  the device tests and `guest.bench.device` start inside network namespaces;
* `proxy`: a TCP relay over kernel sockets for a middle node, copying through user space or
  moving pages with splice(), counting the system calls and copies either way.

`cli` is no program: it holds what the tools' command lines share (option types, stop signals).

A tool may import any layer of `guest.stack` and the shared stand-ins in `guest.testing`; no
layer imports a tool.
"""

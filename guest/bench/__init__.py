"""Benchmarks: each one a program, `python3 -m guest.bench.NAME` (host or guest).

They measure the layers from outside, the way smoltcp keeps `benches/` beside `src/`, so the
protocol layers (`guest.stack`) carry nothing that exists only to time them. A bench sits
above everything: it may import any layer, the traffic tool (`guest.traffic`) and the shared
stand-ins (`guest.testing`); nothing imports a bench except its own tests.

* `wire`: per-packet parse and emit cost of the wire codecs, and checksum throughput;
* `core`: per-segment CPU cost of `NetStack`, receive and send paths;
* `device`: packet socket vs PACKET_MMAP ring, per frame, on a veth between namespaces;
* `session`: the app<->stack boundary against a socketpair and a bare ring;
* `link`: one driver<->protocol crossing of the factored stack's copy link;
* `transmit`: asking for a transmission: the syscall, an io_uring submission, a driver wakeup;
* `veth`: our monolithic stack against the kernel's on a veth pair, with the traffic tool;
* `fuzz`: a long fuzz run against a stack with live connections (a package: the testbed and
  loop in `bench`, the command line in `__main__`; the frames from `guest.testing`).
"""

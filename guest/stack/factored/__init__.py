"""The factored user-level stack: the monolithic stack's code split into protection domains.

After Network Subsystems Reloaded (and the EROS factoring in shared/REFERENCE.md): a **driver
domain** alone holds the NIC; a **protocol domain** runs IP/TCP/UDP/ARP (the very `NetStack`
and event loop of the monolithic stack, `guest.stack.loop.StackLoop`); applications are their own
processes, clients of the protocol domain through the session boundary (`session`), and are
confined domains too when the traffic tool runs them (`guest.traffic.appdomain`). Each domain
runs under its own uid, without capabilities, with no_new_privs and a seccomp allowlist.

Three driver<->protocol boundaries, chosen with `--link` from the registry
`boundaries.BOUNDARIES` (each entry: its set-up, its label, how its counters merge):
* `uring` (default): the kernel's packet rings shared with the protocol domain, which works in
  them in place and starts transmission itself through a send-only io_uring the launcher built
  over the driver's socket (`uring`: `SendRing`, `UringTransmit`): no wakeup of another domain
  on the data path at all, and still no socket in the protocol domain;
* `shared`: the same rings, but the protocol domain rings the driver domain, which makes the
  transmit syscall (`shared`: `SharedNic`, `SharedRingDevice`, `DriverDoorbell`, `Kicker`):
  EROS's cut, one wakeup of the driver per transmitted batch;
* `copy`: frames copied through rings of their own between the domains (`link`, the rings;
  `shmdev`, the protocol domain's device over them; `driver`, the driver domain's pump).

Also: `sandbox` (privilege drop and seccomp), `domains` (forking, confining and hearing from a
domain), `launcher` (`python3 -m guest.stack.factored`: takes the NIC, starts the chosen
boundary's domains, supervises them), `attacks` (what the isolation tests try from inside the
protocol domain). `guest.bench.link` measures what one crossing of the copy link costs.
"""

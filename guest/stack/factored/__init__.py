"""The factored user-level stack: the monolithic stack's code split into protection domains.

After Network Subsystems Reloaded (and the EROS factoring in shared/REFERENCE.md): a **driver
domain** alone holds the NIC; a **protocol domain** runs IP/TCP/UDP/ARP (the very `NetStack`
and event loop of the monolithic stack, `mono.StackProcess`); applications are their own
processes, clients of the protocol domain through the session boundary (`session`). Frames
cross between driver and protocol through shared-memory rings with doorbells. Each domain runs
under its own uid, without capabilities, with no_new_privs and a seccomp allowlist.

Modules: `link` (the driver<->protocol rings), `shmdev` (the protocol domain's device over
them), `driver` (the driver domain's pump), `sandbox` (privilege drop and seccomp), `launcher`
(`python3 -m guest.stack.factored`: creates, confines and supervises the domains), `attacks`
(what the isolation tests try from inside the protocol domain).
"""

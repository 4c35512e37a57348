"""The forwarding extension: IPv4 forwarding at user level, confined, between two NICs.

The paper's design (BU TR 2004-009, `shared/REFERENCE.md`): a middle node's forwarding done by
a sandboxed user-level extension that reaches the Ethernet devices through the kernel's
PACKET_MMAP rings, with no kernel protocol processing and no system call per frame.
`supervisor` (`python3 -m guest.stack.extension`, root) takes the NICs from the kernel, sets up
the rings and a send-only io_uring per NIC, forks the extension, confines it and restarts it
when it dies; `pump` is the extension's loop over the sans-I/O engine `guest.stack.forward`
and its seccomp policy; `attacks` is what the isolation tests try from inside it.

It is a process wiring like `mono` and `factored`, and reuses the factored stack's pieces
(`sandbox`, `domains`, `shared`, `uring`, `attacks`), so it sits in the layer above them.
"""

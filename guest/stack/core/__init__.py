"""The protocol domain as one sans-I/O object: `NetStack` takes frames and time, returns frames
and events (see `netstack.py` for the calling convention).

Modules, one job each: `arp` (neighbour cache and resolution), `ipv4` (filtering, reassembly,
routing, fragmentation), `icmp` (echo, errors, rate limit, ping sockets), `udp` (ports and
queues), `tcp_mux` (4-tuple demultiplexing, listeners, timers, socket lifetime), `tcp_output`
(segments to frames, TSO merging), `counters`, `events`; `gso` cuts TSO frames in software;
`guest.testing.stack_sim` wires two stacks over an in-memory link for tests and benchmarks;
`guest.bench.core` measures the per-segment cost.
"""

from .counters import Counters
from .events import (
    TERMINAL_EVENTS,
    Accepted,
    Closed,
    Connected,
    ConnectionFailed,
    EchoReplyReadable,
    PeerClosed,
    Readable,
    Reset,
    StackEvent,
    UdpReadable,
    UdpUnreachable,
    Writable,
)
from .netstack import MAX_TSO_SIZE, MAX_UDP_PAYLOAD, NetStack, TsoFrame

__all__ = [
    "MAX_TSO_SIZE",
    "MAX_UDP_PAYLOAD",
    "TERMINAL_EVENTS",
    "Accepted",
    "Closed",
    "Connected",
    "ConnectionFailed",
    "Counters",
    "EchoReplyReadable",
    "NetStack",
    "PeerClosed",
    "Readable",
    "Reset",
    "StackEvent",
    "TsoFrame",
    "UdpReadable",
    "UdpUnreachable",
    "Writable",
]

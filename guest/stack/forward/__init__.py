"""Sans-I/O IPv4 forwarding for a middle node: Ethernet frames and time in, frames out.

`engine.Forwarder` routes between interfaces (longest prefix match in `routes`), resolves next
hops with the stack's ARP resolver behind a spoof-resistant intake (`neighbors`), rewrites
forwarded frames in place (TTL, RFC 1624 checksum update, MACs) and answers with ICMP errors.
It sits above `core` (it reuses its ARP resolver, ICMP token bucket and interface config) and
beside `device`/`session`: the forwarding extension wires it to PACKET_MMAP rings.
"""

from .engine import ForwardCounters, Forwarder, Interface
from .routes import NextHop, Route, RoutingTable

__all__ = ["ForwardCounters", "Forwarder", "Interface", "NextHop", "Route", "RoutingTable"]

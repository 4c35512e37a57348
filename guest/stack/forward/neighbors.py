"""Next-hop resolution for a forwarder: the stack's ARP resolver with a spoof-resistant intake.

`core.arp.ArpResolver` learns the way RFC 826 says a host should: any ARP packet from a sender
already in the cache updates its MAC. On a router that rule lets any station on a link redirect
everything forwarded to a next hop with one unsolicited reply. `GuardedArp` keeps the resolver's
cache, bounded pending queues, retries and refresh probes, and replaces only what it learns from:

* Only **replies** teach, and only replies addressed to us (target IP and MAC ours) about a next
  hop we are **resolving now**: the window opens with our request and closes when the reply
  arrives or when the resolver gives up (`max_requests` x `retry_interval`, 3 s by default).
  The first answer wins; a later answer with another MAC is a spoof attempt.
* A reply for a cached next hop with the **same** MAC (the answer to a refresh probe) extends
  the entry; one with a **different** MAC is ignored and counted (`arp:spoof-ignored`). A next
  hop that really changed its MAC is learned again once the old entry expires (`timeout`).
* **Requests never teach**: not even requests for our address, which hosts use to announce
  themselves. They are answered (a host must find its gateway), and the asker is learned only
  through our own request when we first forward to it. Gratuitous ARP is ignored the same way.
* Group MACs as sender, and senders claiming one of our addresses, are never learned.

What remains possible, as with any dynamic ARP: a station on the link that answers our request
before the real next hop does. Counted as spoofing afterwards, not prevented.
"""

from __future__ import annotations

from guest.stack.core.arp import ArpResolver
from guest.stack.wire.arp import OP_REPLY, OP_REQUEST, ArpRepr


class GuardedArp(ArpResolver):
    """`ArpResolver` that learns only from solicited replies (see the module docstring)."""

    def receive(self, packet: memoryview, now: float, out: list) -> None:
        """Process one ARP packet (the Ethernet payload). Raises `WireError` when malformed."""
        arp = ArpRepr.parse(packet)
        c = self.counters
        c.arp_in += 1
        sha = arp.source_hardware_addr
        spa = arp.source_protocol_addr
        if arp.operation == OP_REQUEST:
            c.arp_requests_in += 1
            if arp.target_protocol_addr != self.ip:
                c.drop("arp:not-for-us")
            elif sha[0] & 1:
                c.drop("arp:bad-sender")
            elif spa == self.ip and sha != self.mac:
                c.drop("arp:address-conflict")
            else:
                # Probes (spa 0, RFC 5227) are answered too: the owner defends its address.
                c.arp_replies_out += 1
                out.append(self._frame(sha, OP_REPLY, sha, spa))
            return
        c.arp_replies_in += 1
        if sha[0] & 1 or spa == 0:
            c.drop("arp:bad-sender")
        elif spa == self.ip:
            if sha != self.mac:
                c.drop("arp:address-conflict")
        elif arp.target_protocol_addr != self.ip or arp.target_hardware_addr != self.mac:
            c.drop("arp:not-for-us")
        elif spa in self._pending:
            self._learn(spa, sha, now, out)
        else:
            entry = self._cache.get(spa)
            if entry is None or now >= entry.expires:
                c.drop("arp:unsolicited")
            elif entry.mac == sha:
                self._learn(spa, sha, now, out)  # a refresh probe answered: extend
            else:
                c.drop("arp:spoof-ignored")

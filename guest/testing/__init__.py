"""Stand-ins that tests and benchmarks share: imported by them, never run on their own.

The protocol layers (`guest.stack`) stay free of anything that only exists to exercise them,
the way smoltcp keeps its fakes and fuzz harnesses beside `src/`. What lives here:

* `impairment`: `ImpairedLink`, the one model of delay, bandwidth, loss, corruption and
  reordering behind both simulators and the user-space relay (`guest.tools.relay`);
* `tcp_sim`: an event-driven simulator for the sans-I/O TCP (fake clock, lossy links, hosts);
* `stack_sim`: two `NetStack`s on an in-memory Ethernet with a fake clock;
* `fake_backend`: an in-memory session backend (echo, discard, chargen, loopback);
* `fuzz_frames`: the fuzzers' frame factory: valid frames of every protocol aimed at a live
  stack, the mutators, and the checksum, MAC and TCP-option helpers they use;
* `netns`, `netns_chain`: throwaway network namespaces joined by veths (two in a pair, three
  in a chain with a middle box), for tests and benchmarks on real interfaces.

Imports run one way: modules here may import any layer, no layer imports them.
"""

"""The impairment model every link here shares: delay, bandwidth, loss, corruption, reordering.

`ImpairedLink` decides each item's fate and arrival time(s) from a `LinkConfig` and a seeded
`random.Random`; it knows nothing of what the items are. The segment-level simulator
(`tcp_sim`), the frame-level one (`stack_sim`) and the user-space relay (`guest.tools.relay`)
build on it, so a loss rate means the same in a unit test and on a veth.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One direction of a link."""

    #: One-way propagation delay in seconds.
    delay: float = 0.005
    #: Bits per second; None means infinitely fast (no serialization delay, no queue).
    bandwidth: float | None = None
    #: Drop-tail queue limit in bytes (only with a bandwidth); None means unbounded.
    queue_bytes: int | None = None
    #: Per-segment probabilities.
    loss: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    reorder: float = 0.0
    #: Reordered (and duplicated) segments arrive up to this much later.
    reorder_delay: float = 0.010
    #: Bytes of IP+TCP header counted against the bandwidth.
    header_bytes: int = 40


@dataclass(slots=True)
class LinkStats:
    """What a link did to the segments offered to it."""

    offered: int = 0
    delivered: int = 0
    lost: int = 0
    corrupted: int = 0
    duplicated: int = 0
    reordered: int = 0
    queue_drops: int = 0


class ImpairedLink:
    """One direction of a simulated link: decides each item's fate and arrival time(s).

    Shared by the segment-level simulator (`tcp_sim`), the frame-level one (`stack_sim`) and
    the relay (`guest.tools.relay`), which differ only in what an item is, how its size on the
    wire is counted, and what corruption does to it (`on_corrupt`). The random draws happen in
    one fixed order, so a seed reproduces a run exactly.
    """

    def __init__(self, config: LinkConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.stats = LinkStats()
        self._busy_until = 0.0

    def schedule(self, wire_bytes: int, now: float, on_corrupt: Callable[[], bool]) -> list[float]:
        """Arrival times of an item of `wire_bytes` offered at `now` (empty when it is lost).

        `on_corrupt` runs when the item is corrupted, before any later draw: it returns False
        to lose the item (a receiver would drop it on the checksum), True to deliver it.
        """
        cfg = self.config
        rng = self.rng
        st = self.stats
        st.offered += 1
        depart = now
        if cfg.bandwidth:
            start = max(now, self._busy_until)
            backlog = (start - now) * cfg.bandwidth / 8
            if cfg.queue_bytes is not None and backlog > cfg.queue_bytes:
                st.queue_drops += 1
                return []
            self._busy_until = start + wire_bytes * 8 / cfg.bandwidth
            depart = self._busy_until
        if cfg.loss and rng.random() < cfg.loss:
            st.lost += 1
            return []
        if cfg.corrupt and rng.random() < cfg.corrupt:
            st.corrupted += 1
            if not on_corrupt():
                return []
        arrival = depart + cfg.delay
        if cfg.reorder and rng.random() < cfg.reorder:
            st.reordered += 1
            arrival += rng.uniform(0, cfg.reorder_delay)
        times = [arrival]
        if cfg.duplicate and rng.random() < cfg.duplicate:
            st.duplicated += 1
            times.append(arrival + rng.uniform(0, cfg.reorder_delay))
        st.delivered += len(times)
        return times

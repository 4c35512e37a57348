"""Routes of a lab: which way traffic between any two nodes goes, and what each node is told.

Pure logic over the lab's links (no VMs, no config file): `Routing` gives every node the static
routes it needs to reach every link subnet it is not on (`subnet via NEXT-HOP dev NIC-of-link`),
says which nodes forward (those that are some route's next hop), and walks the path an
experiment's packets take from its client to its server.

Shortest paths count hops. Ties are broken the same way everywhere, so a lab file always gives
the same routes: among the neighbours that bring a node one hop nearer, the first by name, then
by the link's position in the file. A route to a subnet heads for the nearer of the subnet's two
endpoints, so each node decides by the destination alone (as a kernel's routing table does) and
the hops that follow agree with the first.

With ``static=False`` (a lab file's ``routing: none``) there are no routes: only nodes joined by
a link reach each other. The lab's graph is small (at most 254 links), so breadth-first search
from every node costs nothing; a graph library would bring a dependency and still leave the
tie-breaking, the one part that needs care, to be written here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Protocol

__all__ = ["LinkLike", "Path", "Route", "Routing"]


class LinkLike(Protocol):
    """What routing reads of a link (`host.config.LinkConfig`, its defaults resolved)."""

    name: str | None
    endpoints: list[str]
    addresses: list[IPv4Interface] | None


@dataclass(frozen=True)
class Route:
    """A static route of one node: `subnet` through the neighbour at `via`, over `link`."""

    subnet: str
    via: str
    link: str

    def as_dict(self) -> dict[str, str]:
        return {"subnet": self.subnet, "via": self.via, "link": self.link}


@dataclass(frozen=True)
class Path:
    """The nodes a packet visits from client to server, and the link of each hop."""

    nodes: tuple[str, ...]
    links: tuple[str, ...]

    @property
    def hops(self) -> int:
        return len(self.links)

    @property
    def transit(self) -> tuple[str, ...]:
        """The nodes between the two ends: each forwards the experiment's packets."""
        return self.nodes[1:-1]

    def as_dict(self) -> dict[str, list[str]]:
        return {"nodes": list(self.nodes), "links": list(self.links)}


@dataclass(frozen=True)
class _Edge:
    peer: str
    index: int  # the link's position in the file


class Routing:
    """The routes of a lab with these nodes and links (`static=False`: no routes at all)."""

    def __init__(self, nodes: Iterable[str], links: Sequence[LinkLike], *, static: bool = True):
        self.static = static
        self._links = list(links)
        self._nodes = sorted(set(nodes))
        known = set(self._nodes)
        self._adjacent: dict[str, list[_Edge]] = {n: [] for n in self._nodes}
        self._joined: set[int] = set()  # the links between two known nodes
        for index, link in enumerate(self._links):
            a, b = link.endpoints
            if a in known and b in known and a != b:
                self._joined.add(index)
                self._adjacent[a].append(_Edge(b, index))
                self._adjacent[b].append(_Edge(a, index))
        for edges in self._adjacent.values():
            edges.sort(key=lambda e: (e.peer, e.index))
        self._dist = {n: self._bfs(n) for n in self._nodes}
        self.routes: dict[str, list[Route]] = {n: [] for n in self._nodes}
        hops: set[str] = set()
        if static:
            for node in self._nodes:
                self.routes[node] = self._routes_of(node, hops)
        #: The nodes that forward: each is the next hop of some node's route.
        self.forwarding: frozenset[str] = frozenset(hops)

    # --- graph ----------------------------------------------------------------------------

    def _bfs(self, source: str) -> dict[str, int]:
        dist = {source: 0}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            for edge in self._adjacent[node]:
                if edge.peer not in dist:
                    dist[edge.peer] = dist[node] + 1
                    queue.append(edge.peer)
        return dist

    def distance(self, a: str, b: str) -> int | None:
        """Hops on the shortest chain of links from a to b, whatever the routing; None if none."""
        return self._dist.get(a, {}).get(b)

    def _to_link(self, node: str, index: int) -> int | None:
        """Hops from node to the nearer endpoint of link `index`."""
        ends = [self.distance(node, end) for end in self._links[index].endpoints]
        found = [d for d in ends if d is not None]
        return min(found) if found else None

    def _next(self, node: str, index: int) -> _Edge | None:
        """The neighbour one hop nearer link `index` (the tie-breaking rule of the module)."""
        here = self._to_link(node, index)
        if not here:
            return None
        return next(e for e in self._adjacent[node] if self._to_link(e.peer, index) == here - 1)

    def _name(self, index: int) -> str:
        link = self._links[index]
        return str(link.name)

    def _address(self, index: int, node: str) -> IPv4Interface:
        link = self._links[index]
        assert link.addresses is not None, "addresses are resolved by LabConfig"
        return link.addresses[link.endpoints.index(node)]

    def _routes_of(self, node: str, hops: set[str]) -> list[Route]:
        """node's routes; adds their next hops to `hops`."""
        routes = []
        for index, link in enumerate(self._links):
            if node in link.endpoints or index not in self._joined:
                continue
            edge = self._next(node, index)
            if edge is None:
                continue  # unreachable (or the link names an unknown node)
            assert link.addresses is not None
            hops.add(edge.peer)
            routes.append(
                Route(
                    subnet=str(link.addresses[0].network),
                    via=str(self._address(edge.index, edge.peer).ip),
                    link=self._name(edge.index),
                )
            )
        return routes

    # --- experiments ----------------------------------------------------------------------

    def last_link(self, src: str, dst: str) -> str | None:
        """The link into dst on a shortest path from src, where src addresses dst; None if
        dst is out of reach (with `static=False`, anything not one link away)."""
        reach = self.distance(src, dst)
        if reach is None or reach == 0 or (not self.static and reach > 1):
            return None
        best = min(
            (self.distance(src, e.peer), e.peer, e.index)
            for e in self._adjacent[dst]
            if self.distance(src, e.peer) == reach - 1
        )
        return self._name(best[2])

    def path(self, src: str, dst: str, link: str | None = None) -> Path | None:
        """The hops from src to dst's address on `link` (default: `last_link`), as the routes
        take them; None if no route leads there."""
        link = link or self.last_link(src, dst)
        if link is None:
            return None
        index = next(i for i, lk in enumerate(self._links) if lk.name == link)
        if src in self._links[index].endpoints:
            return Path((src, dst), (link,))
        if not self.static:
            return None
        nodes, links = [src], []
        while nodes[-1] not in self._links[index].endpoints:
            edge = self._next(nodes[-1], index)
            if edge is None:
                return None
            nodes.append(edge.peer)
            links.append(self._name(edge.index))
        if nodes[-1] != dst:
            nodes.append(dst)
            links.append(link)
        return Path(tuple(nodes), tuple(links))

    def would_forward(self, src: str, dst: str) -> tuple[str, ...]:
        """The nodes that static routing would make forward between src and dst."""
        if self.static:
            found = self.path(src, dst)
            return found.transit if found else ()
        return Routing(self._nodes, self._links).would_forward(src, dst)

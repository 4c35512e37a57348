"""host.routing: shortest paths, each node's static routes, forwarding, tie-breaking."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path as FilePath

from host.routing import Path, Route, Routing

GOOD = FilePath(__file__).resolve().parents[1] / "configs" / "good"


@dataclass
class L:
    name: str
    endpoints: list[str]
    addresses: list[IPv4Interface]


def links(*pairs: str) -> list[L]:
    """'a-m' 'm-b' ...: link i gets 198.18.{i+1}.1 and .2, as a lab file's defaults do."""
    out = []
    for i, pair in enumerate(pairs):
        a, b = pair.split("-")
        addrs = [IPv4Interface(f"198.18.{i + 1}.{k}/24") for k in (1, 2)]
        out.append(L(pair, [a, b], addrs))
    return out


def test_chain_routes_forwarding_and_path():
    r = Routing("amb", links("a-m", "m-b"))
    assert r.routes == {
        "a": [Route("198.18.2.0/24", "198.18.1.2", "a-m")],
        "b": [Route("198.18.1.0/24", "198.18.2.1", "m-b")],
        "m": [],
    }
    assert r.forwarding == {"m"}
    path = r.path("a", "b")
    assert path == Path(("a", "m", "b"), ("a-m", "m-b"))
    assert path.transit == ("m",) and path.hops == 2
    assert r.last_link("a", "b") == "m-b" and r.last_link("b", "a") == "a-m"
    assert r.path("b", "a") == Path(("b", "m", "a"), ("m-b", "a-m"))
    assert path.as_dict() == {"nodes": ["a", "m", "b"], "links": ["a-m", "m-b"]}


def test_direct_link_is_one_hop_and_needs_no_forwarding():
    r = Routing("ab", links("a-b"))
    assert r.path("a", "b") == Path(("a", "b"), ("a-b",))
    assert r.routes == {"a": [], "b": []} and not r.forwarding


def test_longer_chain_routes_every_subnet_and_every_inner_node_forwards():
    r = Routing("abcd", links("a-b", "b-c", "c-d"))
    assert [x.subnet for x in r.routes["a"]] == ["198.18.2.0/24", "198.18.3.0/24"]
    assert {x.via for x in r.routes["a"]} == {"198.18.1.2"}
    assert r.routes["b"] == [Route("198.18.3.0/24", "198.18.2.2", "b-c")]
    assert r.forwarding == {"b", "c"}
    assert r.path("a", "d").nodes == ("a", "b", "c", "d")
    assert r.distance("a", "d") == 3


def test_ties_go_to_the_first_name_and_every_hop_agrees():
    # A square a-x-b and a-y-b: both ways are two hops; x comes first by name.
    square = links("a-y", "y-b", "a-x", "x-b")
    r = Routing("abxy", square)
    assert r.path("a", "b") == Path(("a", "x", "b"), ("a-x", "x-b"))
    assert r.path("b", "a") == Path(("b", "x", "a"), ("x-b", "a-x"))
    # The same lab in another order gives the same paths.
    again = Routing("yxba", list(reversed(square)))
    assert again.path("a", "b").nodes == ("a", "x", "b")


def test_two_links_between_a_pair_prefer_the_first_in_the_file():
    two = [*links("a-b"), L("b2", ["a", "b"], [IPv4Interface("198.18.9.1/24")] * 2)]
    r = Routing("ab", two)
    assert r.path("a", "b").links == ("a-b",)
    assert r.path("a", "b", link="b2").links == ("b2",)


def test_routes_follow_shortest_paths_in_a_ring():
    r = Routing("abcde", links("a-b", "b-c", "c-d", "d-e", "e-a"))
    assert r.path("a", "c").nodes == ("a", "b", "c")
    assert r.path("a", "d").nodes == ("a", "e", "d")
    # Every route's next hop brings the node nearer the subnet's nearer end.
    for node, routes in r.routes.items():
        assert len(routes) == 3, node  # five links, two of them its own


def test_no_routing_reaches_only_neighbours():
    r = Routing("amb", links("a-m", "m-b"), static=False)
    assert r.routes == {"a": [], "b": [], "m": []} and not r.forwarding
    assert r.path("a", "m") == Path(("a", "m"), ("a-m",))
    assert r.path("a", "b") is None
    assert r.would_forward("a", "b") == ("m",)


def test_disconnected_nodes_have_no_path():
    r = Routing("abc", links("a-b"))
    assert r.path("a", "c") is None and r.distance("a", "c") is None
    assert r.would_forward("a", "c") == ()
    assert r.routes["c"] == [] and r.routes["a"] == []


def test_a_link_to_an_unknown_node_is_ignored():
    r = Routing("ab", links("a-b", "b-zz"))
    assert r.routes["a"] == [] and r.path("a", "b").hops == 1


def test_bring_up_sets_each_nodes_routes_in_one_command():
    from host.lab import NodeState, route_commands

    node = NodeState("a", "sb-t-a", 2222, "log", 1, 512)
    assert route_commands(node) == "true"
    node.routes = [{"subnet": "198.18.2.0/24", "via": "198.18.1.2", "link": "a-m", "dev": "eth1"}]
    node.forwarding = True
    assert route_commands(node) == (
        "ip route replace 198.18.2.0/24 via 198.18.1.2 dev eth1 && sysctl -qw net.ipv4.ip_forward=1"
    )


def test_an_experiment_across_hops_runs_at_the_last_hops_address_through_gateways():
    from host.bench import _target
    from host.config import load_lab
    from host.lab import LabState, NodeState

    config = load_lab(GOOD / "chain_routed.yaml")
    nodes = {n.name: NodeState(n.name, "d", 1, "log", 1, 512) for n in config.nodes}
    for link in config.links:
        for node in link.endpoints:
            nics = nodes[node].nics
            nics.append({"name": f"eth{len(nics) + 1}", "link": link.name})
            nics[-1]["address"] = str(link.address_of(node))
    state = LabState("t", "r", 1, "tcg", "i", "d", "/", "k", 1, None, 0.0, list(nodes.values()))
    exp = config.experiment("three-hops")  # mono, a - m - n - b
    target = _target(config, state, str, exp, config.path_of(exp), 5001)
    assert (target.client, target.server, target.server_ip) == ("a", "b", "198.18.3.2")
    assert "--iface eth1 --addr 198.18.1.1/24" in target.client_path
    assert "--stack-gateway 198.18.1.2" in target.client_path
    assert "--iface eth1 --addr 198.18.3.2/24" in target.server_path
    assert "--stack-gateway 198.18.3.1" in target.server_path
    near = config.experiment("near")
    direct = _target(config, state, str, near, config.path_of(near), 5002)
    assert direct.server_ip == "198.18.1.2" and direct.server_path == "--path kernel"

"""Lab configuration: load, validate and resolve a lab YAML file.

A lab file describes the VMs (nodes), the point-to-point links between them and the
experiments to run. Everything is checked here, *before* any VM is defined, because a
typo discovered after ten minutes of image building and booting is a wasted run.

Every problem is reported as ``file:line: field.path: message`` so the user can jump
straight to it, and all problems are collected into one :class:`ConfigError` rather than
stopping at the first, so one edit-run cycle fixes them all.

Line numbers come from :mod:`host.yamlpos`, which composes the document with a map from
field path to line; the data is then validated with pydantic (this module's models), and
each pydantic error ``loc`` is located through that map. Checks that relate several
parts of the file (names referring to nodes, overlapping subnets, ...) run afterwards in
:func:`_cross_reference_problems`, which returns explicit field paths so those errors point
at the offending entry too, not at the top of the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from guest.stack.device.kinds import DEFAULT_DEVICE, DEVICE_KINDS
from guest.stack.factored.boundaries import BOUNDARIES, DEFAULT_BOUNDARY
from guest.stack.offloads import Offloads
from guest.stack.tcp.controllers import CONGESTION_CONTROLS, DEFAULT_CC
from guest.traffic.providers import PROVIDERS
from host import cpusets
from host.experiments import EXPERIMENT_TYPES
from host.experiments import options as experiment_options
from host.fields import (
    CAPTURE_MAX_BYTES,
    CAPTURE_MIN_BYTES,
    CAPTURE_SNAPLEN,
    CAPTURE_SNAPLEN_RANGE,
    NO_BOOL,
    ExperimentName,
    LabName,
    LinkName,
    NodeName,
)
from host.forwarding import DEFAULT_MODE, FORWARD_MODES
from host.impairments import LinkImpair
from host.impairments import problems as netem_problems
from host.parameter_sweeps import COMMON as SWEEP_COMMON
from host.parameter_sweeps import expand as expand_sweeps
from host.parameter_sweeps import origin_loc
from host.routing import Path as RoutePath
from host.routing import Routing
from host.yamlguard import TooExpensive, check_length
from host.yamlpos import (
    ConfigError,
    ConfigProblem,
    Loc,
    compose,
    in_file_order,
    locate,
)

__all__ = [
    "ALLOWED_PATHS",
    "BENCH_RANGE",
    "MANAGEMENT_SUBNET",
    "ConfigError",
    "ConfigProblem",
    "DefaultsConfig",
    "ExperimentConfig",
    "LabConfig",
    "LinkConfig",
    "NodeConfig",
    "load_lab",
    "parse_lab",
]

#: Network stacks an experiment may exercise: the kernel's, and our user-level stack as one
#: process (mono) or split into protection domains (factored); the traffic tool's registry.
ALLOWED_PATHS: tuple[str, ...] = tuple(PROVIDERS)

#: RFC 2544 benchmarking range. Link addresses must stay inside it so that a mistyped
#: config can never make the testbed send traffic to a real network.
BENCH_RANGE = IPv4Network("198.18.0.0/15")

#: Reserved for the guests' management NIC (set up by the orchestrator, not by links).
MANAGEMENT_SUBNET = IPv4Network("198.19.255.0/24")

#: Prefix lengths that keep a link subnet inside BENCH_RANGE and leave room for two hosts
#: plus network and broadcast addresses.
MIN_PREFIX, MAX_PREFIX = BENCH_RANGE.prefixlen, 30

#: Default link addressing uses 198.18.{i+1}.0/24, so at most 254 links fit.
MAX_LINKS = 254
#: Each lab slot reserves 128 SSH ports on 127.0.0.1 below the kernel's ephemeral range.
MAX_NODES = 120

#: The experiment types, in the registry's order (host/experiments/, one module each).
ExperimentTypeName = Literal[tuple(EXPERIMENT_TYPES)]

#: What the middle nodes of an experiment's route do with its traffic (host/forwarding.py).
ForwardModeName = Literal[tuple(FORWARD_MODES)]

#: The type-specific options (each type's config fragment), with the types that take each.
#: Giving e.g. msg_size to an rr experiment is almost certainly a copy-paste slip, so an
#: option is an error on any other type.
_OPTIONS = experiment_options()
#: What a lab file's `sweep:` may vary (host.parameter_sweeps).
SWEEPABLE = (*_OPTIONS, *SWEEP_COMMON)

# --------------------------------------------------------------------------- field types


def _check_bench_address(value: IPv4Interface) -> IPv4Interface:
    """Enforce the addressing rules that concern a single address (see BENCH_RANGE)."""
    subnet = value.network
    if value.ip not in BENCH_RANGE:
        raise ValueError(
            f"{value} is outside the benchmarking range {BENCH_RANGE}; "
            "stackbed only ever uses RFC 2544 addresses"
        )
    if not MIN_PREFIX <= value.network.prefixlen <= MAX_PREFIX:
        raise ValueError(
            f"{value}: prefix length /{subnet.prefixlen} not allowed; use /{MIN_PREFIX}../"
            f"{MAX_PREFIX} so the subnet stays inside {BENCH_RANGE}"
        )
    if subnet.overlaps(MANAGEMENT_SUBNET):
        raise ValueError(
            f"{value}: subnet {subnet} overlaps the reserved management subnet "
            f"{MANAGEMENT_SUBNET}, which the guests' management NIC uses"
        )
    if value.ip in (subnet.network_address, subnet.broadcast_address):
        kind = "network" if value.ip == subnet.network_address else "broadcast"
        raise ValueError(f"{value} is the {kind} address of {subnet}; pick a host address")
    return value


def _require_cidr_string(value: Any) -> Any:
    """Demand 'a.b.c.d/len': a bare address would silently become a /32."""
    if isinstance(value, str) and "/" not in value:
        raise ValueError(f"{value!r} has no prefix length; write it as e.g. {value}/24")
    if not isinstance(value, str | IPv4Interface):
        raise ValueError("address should be a string like 198.18.1.1/24")
    return value


BenchAddress = Annotated[
    IPv4Interface, BeforeValidator(_require_cidr_string), AfterValidator(_check_bench_address)
]
AddressPair = Annotated[list[BenchAddress], Field(min_length=2, max_length=2)]
EndpointPair = Annotated[list[NodeName], Field(min_length=2, max_length=2)]


Vcpus = Annotated[int, NO_BOOL, Field(ge=1, le=8)]
MemoryMib = Annotated[int, NO_BOOL, Field(ge=256, le=16384)]
#: Host CPUs a node's vCPUs (and its QEMU threads) are pinned to; None floats over all.
CpuSet = Annotated[str, AfterValidator(cpusets.check)]
Mtu = Annotated[int, NO_BOOL, Field(ge=68, le=9216)]
Repeat = Annotated[int, NO_BOOL, Field(ge=1, le=100)]
DurationS = Annotated[float, NO_BOOL, Field(gt=0, le=3600)]


class _Strict(BaseModel):
    """Base for all sections: unknown keys are errors, since they are usually typos."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- models


class DefaultsConfig(_Strict):
    """Values for nodes that do not set their own."""

    vcpus: Vcpus = 1
    memory_mib: MemoryMib = 512
    cpuset: CpuSet | None = None


class NodeConfig(_Strict):
    """One VM. ``vcpus``/``memory_mib`` are filled from ``defaults`` by LabConfig, so after
    loading they are always ints."""

    name: NodeName
    vcpus: Vcpus | None = None
    memory_mib: MemoryMib | None = None
    cpuset: CpuSet | None = None


class LinkConfig(_Strict):
    """A point-to-point link: one emulated NIC in each endpoint, joined on the host.

    ``addresses[k]`` belongs to ``endpoints[k]``. After loading, ``name`` and ``addresses``
    are always set (defaults are resolved by LabConfig).
    """

    name: LinkName | None = None
    endpoints: EndpointPair
    model: Literal["e1000", "e1000e", "virtio"] = "e1000"
    mtu: Mtu = 1500
    addresses: AddressPair | None = None
    #: netem on each end's egress (host.impairments): fields for both directions, and
    #: `from: {NODE: {...}}` overriding them for what NODE sends.
    impair: LinkImpair | None = None

    @field_validator("endpoints")
    @classmethod
    def _distinct_endpoints(cls, value: list[str]) -> list[str]:
        if value[0] == value[1]:
            raise ValueError(f"a link joins two different nodes; both endpoints are {value[0]!r}")
        return value

    @field_validator("addresses")
    @classmethod
    def _one_subnet(cls, value: list[IPv4Interface] | None) -> list[IPv4Interface] | None:
        if value is None:
            return value
        first, second = value
        if first.ip == second.ip:
            raise ValueError(f"both endpoints have the same address {first.ip}")
        if first.network != second.network:
            raise ValueError(
                f"addresses are in different subnets ({first.network} vs {second.network}); "
                "both ends of a link must share one"
            )
        return value

    @model_validator(mode="after")
    def _default_name(self) -> LinkConfig:
        if self.name is None:
            self.name = f"{self.endpoints[0]}-{self.endpoints[1]}"
        return self

    @property
    def subnet(self) -> IPv4Network:
        """The link's subnet, as its addresses say."""
        assert self.addresses is not None, "addresses are resolved by LabConfig"
        return self.addresses[0].network

    def joins(self, a: str, b: str) -> bool:
        """True if this link connects nodes a and b (in either order)."""
        return {a, b} == set(self.endpoints) and a != b

    def address_of(self, node: str) -> IPv4Interface:
        """The interface address ``node`` has on this link."""
        assert self.addresses is not None, "addresses are resolved by LabConfig"
        return self.addresses[self.endpoints.index(node)]


#: The stack options whose choices are the guest's registries, by field.
_REGISTRIES: dict[str, tuple[str, ...]] = {
    "device": tuple(DEVICE_KINDS),
    "link": tuple(BOUNDARIES),
    "cc": tuple(CONGESTION_CONTROLS),
}


class StackOptions(_Strict):
    """How a user-level path's stack is started for the run (ignored by the kernel path)."""

    #: NIC access: PACKET_MMAP ring (TPACKET_V2/V3) or a plain AF_PACKET socket.
    device: str = DEFAULT_DEVICE
    #: Offload levers: none, all, or a comma list of csum, tso, gro (see guest/stack/nic.py).
    offload: str = "all"
    #: Factored path only: the driver<->protocol boundary. "uring": the kernel's packet rings
    #: shared with the protocol domain, which submits the transmit on a send-only io_uring;
    #: "shared": the same rings, the driver domain making the transmit syscall when rung;
    #: "copy": every frame copied through rings between the domains (the guest's registry,
    #: guest/stack/factored/boundaries.py, names them).
    link: str = DEFAULT_BOUNDARY
    #: TCP congestion control of the stack (the guest's registry,
    #: guest/stack/tcp/controllers.py): newreno or cubic.
    cc: str = DEFAULT_CC

    @field_validator("device", "link", "cc")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        """A choice the guest's registry for this field (`_REGISTRIES`) has."""
        names = _REGISTRIES[str(info.field_name)]
        if value not in names:
            raise ValueError(f"{info.field_name} {value!r} is not one of {', '.join(names)}")
        return value

    @field_validator("offload")
    @classmethod
    def _known_offload(cls, value: str) -> str:
        return str(Offloads.parse(value))  # ValueError names the unknown lever


class CaptureOptions(_Strict):
    """Capture every link the experiment's route crosses, from the host side (QEMU's
    filter-dump, host/capture.py): one pcap per link and run, next to the result file."""

    #: The size bound of each pcap file; the capture stops early when it is reached.
    max_bytes: Annotated[int, NO_BOOL, Field(ge=CAPTURE_MIN_BYTES)] = CAPTURE_MAX_BYTES
    #: The bytes kept of each frame (65535: whole frames).
    snaplen: Annotated[
        int, NO_BOOL, Field(ge=CAPTURE_SNAPLEN_RANGE[0], le=CAPTURE_SNAPLEN_RANGE[1])
    ] = CAPTURE_SNAPLEN


def _capture_flag(value: Any) -> Any:
    """`capture: true` asks for the default bounds, `capture: false` for no capture."""
    if value is True:
        return {}
    return None if value is False else value


class _ExperimentCommon(_Strict):
    """The fields of every experiment, whatever its type; ExperimentConfig adds the types'
    options after them, then the common fields that follow in the file's documented order."""

    name: ExperimentName
    type: ExperimentTypeName
    path: str = "kernel"
    #: Set when the entry is a member of a sweep (host.parameter_sweeps): the family's name,
    #: the parameter and this member's value. Not a field of the file.
    _sweep_point: dict | None = PrivateAttr(default=None)
    client: NodeName
    server: NodeName
    link: LinkName | None = None
    duration_s: DurationS = 10.0
    #: What each middle node of the route does with the traffic (kernel forwarding, or a
    #: proxy); only an experiment whose route crosses a middle node may ask for another mode.
    forward: ForwardModeName = DEFAULT_MODE

    @field_validator("forward")
    @classmethod
    def _mode_carries_type(cls, value: str, info: ValidationInfo) -> str:
        """A mode that cannot pass the type's traffic on (a TCP proxy and ping) is refused."""
        kind = EXPERIMENT_TYPES.get(str(info.data.get("type")))
        why = FORWARD_MODES[value].refuses(kind) if kind is not None else None
        if why:
            raise ValueError(why)
        return value

    @field_validator("path")
    @classmethod
    def _known_path(cls, value: str, info: ValidationInfo) -> str:
        if value not in ALLOWED_PATHS:
            raise ValueError(f"path {value!r} is not allowed; allowed: {', '.join(ALLOWED_PATHS)}")
        kind = EXPERIMENT_TYPES.get(str(info.data.get("type")))
        if kind is not None and kind.kernel_only and value != "kernel":
            raise ValueError(
                f"{kind.name} runs on the kernel's stack only; path {value!r} does not apply"
            )
        return value

    @field_validator("stack", check_fields=False)
    @classmethod
    def _stack_applies(cls, value: StackOptions, info: ValidationInfo) -> StackOptions:
        """Options the path would ignore are refused, not dropped without a word."""
        path = info.data.get("path")
        given = value.model_fields_set
        if given and path == "kernel":
            raise ValueError(
                "stack options apply to the user-level paths (mono, factored), not to the "
                "kernel's stack"
            )
        if given and path == "floor":
            raise ValueError(
                "stack options apply to the user-level stacks (mono, factored); the floor "
                "path runs no stack"
            )
        if "link" in given and path not in (None, "factored"):
            raise ValueError(f"stack.link applies to the factored path only, not to {path}")
        return value

    @field_validator("server")
    @classmethod
    def _server_is_not_client(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("client"):
            raise ValueError(f"client and server must be different nodes; both are {value!r}")
        return value

    @field_validator(*_OPTIONS, check_fields=False)
    @classmethod
    def _applies_to_type(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        field = info.field_name or ""
        owners = _OPTIONS[field][1]
        if value is not None and kind is not None and kind not in owners:
            wanted = " or ".join(owners)
            raise ValueError(f"{field} only applies to {wanted} experiments, not {kind}")
        return value

    @property
    def sweep_point(self) -> dict | None:
        """The sweep this entry is a member of, if any: family, parameter, value."""
        return self._sweep_point

    @model_validator(mode="after")
    def _type_defaults(self) -> _ExperimentCommon:
        for field, (option, owners) in _OPTIONS.items():
            if self.type in owners and getattr(self, field) is None:
                setattr(self, field, option.default)
        return self


ExperimentConfig = create_model(
    "ExperimentConfig",
    __base__=_ExperimentCommon,
    __module__=__name__,
    __doc__="One measurement. Type-specific options are None for types they do not apply to.",
    **{name: (option.annotation | None, None) for name, (option, _owners) in _OPTIONS.items()},
    repeat=(Repeat, 1),
    stack=(StackOptions, Field(default_factory=StackOptions)),
    capture=(Annotated[CaptureOptions | None, BeforeValidator(_capture_flag)], None),
    # Another experiment of the same type that this one is compared with: the report shows
    # this one's compared figure (the type's: throughput for stream, p50 latency for rr) as
    # a ratio of the baseline's, paired round by round (`invoke bench --rounds N`).
    baseline=(ExperimentName | None, None),
    # Impairments for this run, by link name, in place of the lab's on those links (each
    # link's whole `impair:`); the lab's own are restored after the run.
    impair=(dict[LinkName, LinkImpair], Field(default_factory=dict)),
    # The MTU of every link the experiment crosses, for this run (both ends of each link),
    # in place of the links' own; put back after the run. None: the links' own.
    mtu=(Mtu | None, None),
)


def _none_as_empty(value: Any) -> Any:
    """``links:`` with every entry commented out parses as null; treat it as no entries."""
    return [] if value is None else value


class LabConfig(_Strict):
    """A whole lab, with every default resolved.

    Build it with :func:`load_lab`; validating a dict directly skips the cross-reference
    checks (missing nodes, overlapping subnets, ...), which need the source line map.
    """

    lab: LabName
    image: LabName = "default"
    description: str | None = None
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    nodes: Annotated[list[NodeConfig], Field(min_length=1, max_length=MAX_NODES)]
    links: Annotated[
        list[LinkConfig], BeforeValidator(_none_as_empty), Field(max_length=MAX_LINKS)
    ] = Field(default_factory=list)
    #: "static": every node gets routes to every subnet along shortest paths, the nodes in
    #: between forward (host/routing.py); "none": only nodes joined by a link reach each other.
    routing: Literal["static", "none"] = "static"
    experiments: Annotated[list[ExperimentConfig], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list
    )

    _source_path: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_defaults(self) -> LabConfig:
        for node in self.nodes:
            node.vcpus = self.defaults.vcpus if node.vcpus is None else node.vcpus
            if node.memory_mib is None:
                node.memory_mib = self.defaults.memory_mib
            if node.cpuset is None:
                node.cpuset = self.defaults.cpuset
        for index, link in enumerate(self.links):
            if link.addresses is None:
                link.addresses = [IPv4Interface(f"198.18.{index + 1}.{k}/24") for k in (1, 2)]
        for experiment in self.experiments:
            if experiment.link is None:
                joining = self.link_between(experiment.client, experiment.server)
                experiment.link = joining.name if joining else None
        return self

    @property
    def source_path(self) -> str | None:
        """The file this config was loaded from, as the caller spelled it."""
        return self._source_path

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``; KeyError if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"lab {self.lab!r} has no node {name!r}")

    def link(self, name: str) -> LinkConfig:
        """The link called ``name``; KeyError if there is none."""
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(f"lab {self.lab!r} has no link {name!r}")

    def link_between(self, a: str, b: str) -> LinkConfig | None:
        """The first link joining a and b (either order), or None."""
        return next((link for link in self.links if link.joins(a, b)), None)

    def routes(self) -> Routing:
        """The lab's routes: each node's, which nodes forward, each experiment's path."""
        return Routing(
            [node.name for node in self.nodes], self.links, static=self.routing == "static"
        )

    def path_of(self, experiment: ExperimentConfig, routes: Routing | None = None) -> RoutePath:
        """The hops of an experiment from client to server: over its `link` if the two are
        joined by one, else along the lab's routes to the server's address on the last hop."""
        found = (routes or self.routes()).path(
            experiment.client, experiment.server, experiment.link
        )
        if found is None:
            raise KeyError(f"no route from {experiment.client} to {experiment.server}")
        return found

    def experiment(self, name: str) -> ExperimentConfig:
        """The experiment called ``name``; KeyError if there is none."""
        for experiment in self.experiments:
            if experiment.name == name:
                return experiment
        raise KeyError(f"lab {self.lab!r} has no experiment {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable resolved config, recorded next to every result."""
        return {"source_path": self.source_path, **self.model_dump(mode="json")}


# --------------------------------------------------------------------------- cross checks


def _duplicates(names: list[str]) -> Iterator[tuple[int, int]]:
    """Yield (index, index of first occurrence) for every repeated name."""
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            yield index, first[name]
        else:
            first[name] = index


def _node_problems(lab: LabConfig) -> Iterator[tuple[Loc, str]]:
    for index, first in _duplicates([node.name for node in lab.nodes]):
        yield (
            ("nodes", index, "name"),
            f"duplicate node name {lab.nodes[index].name!r} (also nodes[{first}])",
        )


def _link_problems(lab: LabConfig) -> Iterator[tuple[Loc, str]]:
    known = {node.name for node in lab.nodes}
    names = [str(link.name) for link in lab.links]
    for index, first in _duplicates(names):
        yield (
            ("links", index, "name"),
            f"duplicate link name {names[index]!r} (also links[{first}])",
        )
    for index, link in enumerate(lab.links):
        for end, node in enumerate(link.endpoints):
            if node not in known:
                yield ("links", index, "endpoints", end), f"no node named {node!r}"
    for index, link in enumerate(lab.links):
        for other in range(index):
            if link.subnet.overlaps(lab.links[other].subnet):
                yield (
                    ("links", index, "addresses"),
                    f"subnet {link.subnet} overlaps links[{other}] {names[other]!r} "
                    f"({lab.links[other].subnet})",
                )
                break
        yield from _impair_problems(index, link)


def _impair_problems(index: int, link: LinkConfig) -> Iterator[tuple[Loc, str]]:
    """`from:` names a sender, an endpoint of this link; netem can do what is asked."""
    if link.impair is None:
        return
    for loc, message in netem_problems(link.impair):
        yield ("links", index, "impair", *loc), message
    for sender in link.impair.from_:
        if sender not in link.endpoints:
            yield (
                ("links", index, "impair", "from", sender),
                f"{sender!r} is not an endpoint of link {link.name!r} "
                f"({link.endpoints[0]!r}, {link.endpoints[1]!r}); from: names the sending end",
            )


def _override_problems(
    lab: LabConfig, index: int, exp: ExperimentConfig, routes: Routing
) -> Iterator[tuple[Loc, str]]:
    """An experiment's `impair:` names links its traffic crosses."""
    links = {link.name: link for link in lab.links}
    usable = exp.link is None or (
        exp.link in links and links[exp.link].joins(exp.client, exp.server)
    )
    path = routes.path(exp.client, exp.server, exp.link) if exp.impair and usable else None
    for name, impair in exp.impair.items():
        where: Loc = ("experiments", index, "impair", name)
        for loc, message in netem_problems(impair):
            yield (*where, *loc), message
        if name not in links:
            yield where, f"no link named {name!r}"
        elif path is not None and name not in path.links:
            crossed = ", ".join(path.links)
            yield where, f"link {name!r} is not on this experiment's path (it crosses {crossed})"
        else:
            link = links[name]
            for sender in impair.from_:
                if sender not in link.endpoints:
                    yield (
                        (*where, "from", sender),
                        f"{sender!r} is not an endpoint of link {name!r}",
                    )


def _experiment_problems(lab: LabConfig) -> Iterator[tuple[Loc, str]]:
    known = {node.name for node in lab.nodes}
    links = {link.name: link for link in lab.links}
    routes = lab.routes()
    names = [experiment.name for experiment in lab.experiments]
    for index, first in _duplicates(names):
        yield (
            ("experiments", index, "name"),
            f"duplicate experiment name {names[index]!r} (also experiments[{first}])",
        )
    for index, exp in enumerate(lab.experiments):
        here: Loc = ("experiments", index)
        missing = [role for role in ("client", "server") if getattr(exp, role) not in known]
        for role in missing:
            yield (*here, role), f"no node named {getattr(exp, role)!r}"
        if missing:
            continue
        if exp.link is None:
            if routes.path(exp.client, exp.server) is None:
                yield (*here, "server"), _no_route(lab, routes, exp.client, exp.server)
        elif exp.link not in links:
            yield (*here, "link"), f"no link named {exp.link!r}"
        elif not links[exp.link].joins(exp.client, exp.server):
            ends = links[exp.link].endpoints
            why = (
                ""
                if lab.link_between(exp.client, exp.server)
                else "; leave link: out where no link joins them, the experiment then "
                "follows the lab's routes"
            )
            yield (
                (*here, "link"),
                f"link {exp.link!r} joins {ends[0]!r} and {ends[1]!r}, "
                f"not client {exp.client!r} and server {exp.server!r}{why}",
            )
        yield from _override_problems(lab, index, exp, routes)
        yield from _forward_problems(lab, index, exp, routes)
        yield from _floor_problems(index, exp, routes)
    yield from _baseline_problems(lab)


def _floor_problems(
    index: int, exp: ExperimentConfig, routes: Routing
) -> Iterator[tuple[Loc, str]]:
    """The floor path moves raw Ethernet frames: its two ends must share a link."""
    if exp.path != "floor":
        return
    path = routes.path(exp.client, exp.server, exp.link)
    if path is not None and path.hops > 1:
        yield (
            ("experiments", index, "path"),
            f"path floor speaks no IP (raw frames on one link), but {exp.client} and "
            f"{exp.server} are {path.hops} hops apart; pick two nodes that share a link",
        )


def _forward_problems(
    lab: LabConfig, index: int, exp: ExperimentConfig, routes: Routing
) -> Iterator[tuple[Loc, str]]:
    """A forwarding mode other than the kernel's needs a middle node on the route."""
    mode = FORWARD_MODES[exp.forward]
    if not mode.needs_middle:
        return
    links = {link.name: link for link in lab.links}
    if exp.link is not None and (
        exp.link not in links or not links[exp.link].joins(exp.client, exp.server)
    ):
        return  # the link's own problem is reported
    path = routes.path(exp.client, exp.server, exp.link)
    if path is not None and not path.transit:
        yield (
            ("experiments", index, "forward"),
            f"forward {exp.forward} needs a middle node, but {exp.client} and {exp.server} "
            f"share link {path.links[0]!r}: no node between them forwards "
            f"(leave forward: out, or pick nodes with no link of their own)",
        )


def _no_route(lab: LabConfig, routes: Routing, client: str, server: str) -> str:
    """Why no route leads from client to server: no chain of links, or no forwarding."""
    between = routes.would_forward(client, server)
    if not between:
        return (
            f"no link joins client {client!r} and server {server!r}, nor any chain of links; "
            "add one to links"
        )
    nodes = " and ".join(between)
    verb = "does" if len(between) == 1 else "do"
    return (
        f"no route from {client} to {server}: routing is {lab.routing}, so {nodes} "
        f"{verb} not forward (no link joins them; remove 'routing: none' or add a link)"
    )


def _baseline_problems(lab: LabConfig) -> Iterator[tuple[Loc, str]]:
    by_name = {exp.name: exp for exp in lab.experiments}
    for index, exp in enumerate(lab.experiments):
        if exp.baseline is None:
            continue
        where: Loc = ("experiments", index, "baseline")
        other = by_name.get(exp.baseline)
        if EXPERIMENT_TYPES[exp.type].compared is None:
            kinds = " and ".join(n for n, t in EXPERIMENT_TYPES.items() if t.compared)
            yield where, f"only {kinds} experiments are compared with a baseline, not {exp.type}"
        elif exp.baseline == exp.name:
            yield where, "an experiment cannot be its own baseline"
        elif other is None:
            yield where, f"no experiment named {exp.baseline!r}"
        elif other.type != exp.type:
            why = f"it must be of this experiment's type, {exp.type}"
            yield where, f"baseline {exp.baseline!r} is of type {other.type}; {why}"


def _cross_reference_problems(lab: LabConfig) -> list[tuple[Loc, str]]:
    """Checks spanning several entries, each returned with the path of the culprit.

    Only run on a schema-valid lab: against a half-valid one they cascade (a node whose
    name failed validation would make every link to it "missing").
    """
    return [*_node_problems(lab), *_link_problems(lab), *_experiment_problems(lab)]


def _bare(annotation: Any) -> Any:
    """The type inside Annotated[...] and X | None."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _model_at(loc: Loc) -> type[BaseModel]:
    """The model whose fields may stand at `loc` (a key's parent path), following the schema
    through nested models, lists and maps; LabConfig where the path leaves it."""
    here: Any = LabConfig
    for part in loc:
        here = _bare(here)
        if isinstance(here, type) and issubclass(here, BaseModel):
            fields = {info.alias or name: info for name, info in here.model_fields.items()}
            if part not in fields:
                return LabConfig
            here = fields[str(part)].annotation
        elif get_origin(here) is list and isinstance(part, int):
            here = get_args(here)[0]
        elif get_origin(here) is dict:
            here = get_args(here)[1]
        else:
            return LabConfig
    here = _bare(here)
    return here if isinstance(here, type) and issubclass(here, BaseModel) else LabConfig


def _unknown_field_message(loc: Loc) -> str:
    """Explain an unknown key by listing what is allowed there, with a spelling guess."""
    model = _model_at(loc[:-1])
    allowed = [info.alias or name for name, info in model.model_fields.items()]
    message = f"unknown field {loc[-1]!r}"
    guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if guess:
        message += f" (did you mean {guess[0]!r}?)"
    return f"{message}; allowed: {', '.join(allowed)}"


def _pydantic_message(error: Any) -> str:
    """pydantic's message, made clearer where YAML habits commonly cause the error."""
    if error["type"] == "extra_forbidden":
        return _unknown_field_message(tuple(error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "string_type" and isinstance(error.get("input"), bool):
        message += " (YAML reads unquoted yes/no/on/off/true/false as booleans; quote it)"
    return message


# --------------------------------------------------------------------------- public API


def parse_lab(text: str, source: str = "<string>") -> LabConfig:
    """Validate lab YAML given as text; ``source`` names it in messages."""
    data, line_map = compose(
        source,
        text,
        empty_message="file is empty; a lab needs at least 'lab' and 'nodes'",
        mapping_hint="lab:, nodes:, ...",
    )
    lines = line_map.lines
    problems = line_map.duplicate_problems(source)
    data, origins, sweep_problems = expand_sweeps(data, SWEEPABLE)
    problems += [locate(source, loc, msg, lines) for loc, msg in sweep_problems]
    if problems and sweep_problems:
        raise ConfigError(in_file_order(problems))
    try:
        lab = LabConfig.model_validate(data)
    except ValidationError as exc:
        problems += [
            locate(source, origin_loc(tuple(err["loc"]), origins), _pydantic_message(err), lines)
            for err in exc.errors()
        ]
        raise ConfigError(in_file_order(problems)) from None
    problems += [
        locate(source, origin_loc(loc, origins), msg, lines)
        for loc, msg in _cross_reference_problems(lab)
    ]
    if problems:
        raise ConfigError(in_file_order(problems))
    for index, origin in origins.items():
        lab.experiments[index]._sweep_point = origin.point()
    lab._source_path = source
    return lab


def load_lab(path: str | Path) -> LabConfig:
    """Load and validate a lab file; raise ConfigError listing every problem found."""
    file = str(path)
    try:
        check_length(Path(path).stat().st_size)  # an enormous file is not even read
        text = Path(path).read_text(encoding="utf-8")
    except TooExpensive as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"refused: {exc}")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"cannot read lab file: {exc}")]) from exc
    return parse_lab(text, file)

"""The app<->stack boundary: shared-memory rings, doorbells and a session protocol.

Applications are separate processes that use the user-level stack through `StackClient`; the
stack serves them with `SessionServer`, which knows nothing about TCP and talks to a
`StackBackend`. The same boundary serves the monolithic and the factored designs, so that their
measured difference is the driver<->protocol split alone.

Modules, bottom up: `shm` (sealed memfd regions, fence), `ring` (SPSC slot ring), `stream`
(byte-stream mode), `doorbell` (eventfd with sleep flags), `channel` (one socket's rings and
bells), `protocol` (control messages), `requests` (server -> stack requests), `server`,
`backend` (StackBackend, dispatch, run), `client`. An in-memory backend for tests and
benchmarks is `guest.testing.fake_backend`; the benchmark is `guest.bench.session`.
"""

from .backend import StackBackend, dispatch, pump_tx, run
from .channel import DEFAULT_GEOMETRY, ChannelLayout
from .client import (
    Pending,
    StackClient,
    StackDatagramSocket,
    StackListener,
    StackSocket,
    wait_any,
)
from .requests import (
    BindReq,
    CloseReq,
    ConnectReq,
    Event,
    ListenReq,
    Request,
    RxSpace,
    SendToReq,
    ShutdownReq,
    TxReady,
)
from .ring import RingConsumer, RingGeometry, RingProducer
from .server import SessionServer

__all__ = [
    "DEFAULT_GEOMETRY",
    "BindReq",
    "ChannelLayout",
    "CloseReq",
    "ConnectReq",
    "Event",
    "ListenReq",
    "Pending",
    "Request",
    "RingConsumer",
    "RingGeometry",
    "RingProducer",
    "RxSpace",
    "SendToReq",
    "SessionServer",
    "ShutdownReq",
    "StackBackend",
    "StackClient",
    "StackDatagramSocket",
    "StackListener",
    "StackSocket",
    "TxReady",
    "dispatch",
    "pump_tx",
    "run",
    "wait_any",
]

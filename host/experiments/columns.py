"""The results table's columns that several experiment types fill.

A type with a figure of its own defines its Column in its module; `rank` places it.
"""

from __future__ import annotations

from host.experiments.base import Column

MBIT_PER_S = Column("Mbit/s", 10, ".1f")
TRANSACTIONS_PER_S = Column("trans/s", 20)
P50_US = Column("p50 µs", 30)
P99_US = Column("p99 µs", 40)
CLIENT_CPU = Column("client CPU", 50, percent=True)
SERVER_CPU = Column("server CPU", 60, percent=True)
HOST_CPU = Column("host CPU", 70, percent=True)
RETRANSMITS = Column("rexmit", 80)

#: What a TCP transfer between the guests cost, as every TCP type records it.
TCP_COSTS = {
    CLIENT_CPU: "client_cpu",
    SERVER_CPU: "server_cpu",
    HOST_CPU: "host_cpu",
    RETRANSMITS: "retransmits",
}

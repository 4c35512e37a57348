"""Measuring helpers the experiment types share: host CPU, the traffic tool's client/server
pair and its JSON lines, the user-level stacks' own account of a run, waiting for a listener.

Guest CPU comes from the traffic tool (/proc/stat in the guest); host CPU is sampled here,
because every figure on a TCG host is bound by the host's cores.
"""

from __future__ import annotations

import json
from pathlib import Path

from guest.stack.factored.boundaries import BOUNDARIES
from host.experiments.base import BenchError, Target
from host.ssh import Guest, traffic_command

#: The traffic tool's event on stderr once its server listens (guest/traffic/workloads.py).
LISTENING = '"event": "listening"'
#: How long a server may take to listen (a user-level stack starts first).
SERVER_START_S = 60.0


def host_cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all host CPUs."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def host_cpu_since(start: tuple[int, int]) -> float | None:
    busy, total = host_cpu_times()
    return round((busy - start[0]) / (total - start[1]), 3) if total > start[1] else None


def json_line(result, what: str) -> dict:
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("{"):
            data = json.loads(line)
            if "error" in data:
                raise BenchError(f"{what}: {data['error']}")
            return data
    raise BenchError(
        f"{what} printed no result (exit {result.exit_status}): {result.stderr.strip()[-500:]}"
    )


def traffic_pair(
    t: Target,
    server_args: str,
    client_args: str,
    server_role: str,
    client_role: str,
    timeout: float,
) -> tuple[dict, dict]:
    """Start the server, run the client to completion, collect both JSON lines.

    A client that connects to a proxy (`t.connect_ip` is not the server's) starts once the
    server listens: the proxy accepts at once and connects on only then, so a server not yet
    listening would reset the client's connection instead of refusing it (a refusal the
    client retries)."""
    srv = t.server.start(
        traffic_command(
            server_role, f"{t.server_path} --bind {t.server_ip} --port {t.port} {server_args}"
        )
    )
    if t.connect_ip != t.server_ip:
        srv.wait_for_stderr(LISTENING, timeout=SERVER_START_S)
    try:
        cli = t.client.run(
            traffic_command(
                client_role, f"{t.client_path} --peer {t.connect_ip} --port {t.port} {client_args}"
            ),
            timeout=timeout,
        )
    finally:
        srv_result = srv.wait(timeout=60)
    return json_line(cli, f"{client_role} on {t.client.name}"), json_line(
        srv_result, f"{server_role} on {t.server.name}"
    )


def _retransmits(stack: dict | None, client: dict) -> int | None:
    """Both user-level stacks' retransmitted segments; on the kernel path, the client
    kernel's for the connection (TCP_INFO, as iperf3 counts them), where the tool gave it."""
    if stack:
        return sum(side["retransmits"] for side in stack.values())
    return client.get("tcp_retransmits")


def tool_figures(client: dict, server: dict, host_cpu: float | None) -> dict:
    """The figures every run of the traffic tool gives besides its own: what it cost on each
    side, what the user-level stacks said of themselves (and their retransmissions), and the
    tool's raw records."""
    stack = stack_summary(client, server)
    return {
        "client_cpu": client["cpu_system"],
        "server_cpu": server["cpu_system"],
        "host_cpu": host_cpu,
        "stack": stack,
        "retransmits": _retransmits(stack, client),
        "raw": {"client": client, "server": server},
    }


def stack_summary(client: dict, server: dict) -> dict | None:
    """What the user-level stacks of a run said about themselves on exit (None on the
    kernel path): the levers in force, how much TSO and GRO merged, and the retransmissions
    of each side, which show whether the link or the receiver dropped frames."""
    stacks = {side: rec.get("stack") for side, rec in (("client", client), ("server", server))}
    if not any(stacks.values()):
        return None
    out: dict = {}
    for side, st in stacks.items():
        if not st:
            continue
        if "floor" in st:  # the floor path: no stack, its own go-back-N's counters
            floor, dev = st["floor"], st.get("device", {})
            out[side] = {
                "retransmits": floor.get("resent", 0),
                "timeouts": floor.get("timeouts", 0),
                "tx_frames": dev.get("tx_frames", 0),
                "rx_frames": dev.get("rx_frames", 0),
                "rx_dropped": dev.get("rx_dropped", 0),
            }
            continue
        tcp = st.get("stack", {})
        nic = st.get("nic", {})
        dev = st.get("device", {})
        out[side] = {
            "offloads": nic.get("offloads"),
            "retransmits": tcp.get("tcp.retransmits_fast", 0)
            + tcp.get("tcp.retransmits_timeout", 0),
            "timeouts": tcp.get("tcp.timeouts", 0),
            "segments_out": tcp.get("tcp.segments_out", 0),
            "tx_frames": dev.get("tx_frames", 0),
            "rx_frames": dev.get("rx_frames", 0),
            "tx_tso_frames": nic.get("tx_tso_frames", 0),
            "rx_gro_frames": nic.get("rx_gro_frames", 0),
            "rx_dropped": dev.get("rx_dropped", 0),
            "drops": tcp.get("drops_total", 0),
        }
        for key in ("loop", "cpu", "profile"):  # the stack loop's own account of itself
            if key in st:
                out[side][key] = st[key]
        link = st.get("link") or {}
        boundary = BOUNDARIES.get(link.get("mode", ""))
        if boundary is not None and boundary.over_kernel_rings:
            # How the factored stack's transmits crossed: wakeups of the driver domain (rung
            # by the protocol domain), or submissions on the send-only io_uring (no wakeup).
            driver, ring = link.get("driver") or {}, link.get("transmit") or {}
            out[side]["crossings"] = {
                "mode": link["mode"],
                "tx_batches": dev.get("tx_batches", 0),
                "driver_wakeups": driver.get("wakeups", 0),
                "uring_submits": ring.get("submits", 0),
                "errors": driver.get("errors", 0) + ring.get("errors", 0),
            }
    return out


def wait_listening(guest: Guest, port: int, timeout: float = 30.0) -> None:
    """Wait inside the guest until something listens on TCP `port` (one SSH round trip)."""
    tries = int(timeout / 0.1)
    r = guest.run(
        f'for i in $(seq {tries}); do ss -Hltn "sport = :{port}" | grep -q . && exit 0; '
        f"sleep 0.1; done; exit 1",
        timeout=timeout + 30,
    )
    if r.exit_status != 0:
        raise BenchError(f"{guest.name}: nothing listens on port {port} after {timeout:.0f} s")

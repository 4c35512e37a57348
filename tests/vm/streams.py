"""What the VM tests share: the traffic tool's JSON line, and a checked stream between guests."""

from __future__ import annotations

import hashlib
import json

from guest.traffic import Pattern
from host.ssh import Guest, traffic_command


def result(cmd) -> dict:
    """The traffic tool's JSON line of a command that succeeded. On failure the message shows
    the error line too: for a user-level path it holds the stack's counters."""
    assert cmd.exit_status == 0, f"{cmd.stdout.strip()[-3000:]}\n{cmd.stderr}"
    return json.loads(cmd.stdout.strip().splitlines()[-1])


def checked_stream(
    source: Guest,
    sink: Guest,
    ip: str,
    port: int,
    nbytes: int,
    *,
    seed: int,
    source_args: str = "--path kernel",
    sink_args: str = "--path kernel",
    peer: str | None = None,
) -> tuple[dict, dict]:
    """Send `nbytes` of the seeded pattern from `source` to a sink on `sink` at `ip` (the
    source connecting to `peer` instead when given: a proxy on the way); assert that both
    ends counted and hashed exactly what the pattern holds; return both results."""
    receiver = sink.start(traffic_command("sink", f"{sink_args} --bind {ip} --port {port}"))
    if peer is not None:  # a proxy would reset the source's connection until the sink listens
        assert receiver.wait_for_stderr('"event": "listening"', timeout=60)
    send = f"--peer {peer or ip} --port {port} --bytes {nbytes} --seed {seed} --msg-size 50000"
    command = traffic_command("source", f"{source_args} {send} --connect-timeout 60")
    sent = result(source.run(command, timeout=300))
    received = result(receiver.wait(timeout=120))
    expected = hashlib.sha256(bytes(Pattern(seed, nbytes).window(0, nbytes))).hexdigest()
    assert sent["bytes"] == received["bytes"] == nbytes
    assert sent["sha256"] == received["sha256"] == expected
    return sent, received

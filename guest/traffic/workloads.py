"""The four roles (sink, source, rr-server, rr-client) and their JSON result records."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import TrafficError, phase
from .metrics import Meter, Pattern, latency_summary_us, rate
from .providers import (
    SocketProvider,
    Stream,
    connect_with_retry,
    drain_until_eof,
    recv_exact,
)

TOOL = "stackbed-traffic"
VERSION = 1


def emit(record: dict[str, Any]) -> None:
    """The single machine-readable stdout line."""
    sys.stdout.write(json.dumps(record, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def log_event(**fields: Any) -> None:
    """Progress events go to stderr as JSON so tests/orchestrators can parse them too."""
    sys.stderr.write(json.dumps(fields) + "\n")
    sys.stderr.flush()


def base_record(args: argparse.Namespace) -> dict[str, Any]:
    """Identity keys shared by result and error lines, so every line can be attributed."""
    record: dict[str, Any] = {
        "tool": TOOL,
        "version": VERSION,
        "role": args.role,
        "path": args.path,
        "label": args.label,
    }
    if args.role in ("source", "rr-client"):
        record["peer"] = args.peer
    else:
        record["bind"] = args.bind
    record["port"] = args.port
    return record


def _accept_one(args: argparse.Namespace, provider: SocketProvider, *, nodelay: bool) -> Stream:
    with phase(f"listen on {args.bind}:{args.port}"):
        listener = provider.listen(args.bind, args.port, timeout=args.timeout, nodelay=nodelay)
    try:
        args.port = listener.port  # report the real port when 0 was asked for
        log_event(event="listening", port=listener.port, bind=args.bind, role=args.role)
        with phase("accept"):
            return listener.accept()
    finally:
        listener.close()


def _connect(args: argparse.Namespace, provider: SocketProvider, *, nodelay: bool) -> Stream:
    return connect_with_retry(
        provider,
        args.peer,
        args.port,
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
        nodelay=nodelay,
    )


def run_sink(args: argparse.Namespace, provider: SocketProvider) -> dict[str, Any]:
    """Receive one stream to EOF; the measured window runs from accept to EOF."""
    stream = _accept_one(args, provider, nodelay=False)
    buf = bytearray(args.msg_size)
    view = memoryview(buf)
    full = len(view)
    hasher = None if args.no_hash else hashlib.sha256()
    total = 0
    try:
        meter = Meter.start()
        with phase("receive"):
            while (n := stream.recv_into(view)) > 0:
                total += n
                if hasher is not None:
                    hasher.update(view if n == full else view[:n])
        figures = meter.stop()
    finally:
        stream.close()
    return _stream_record(args, total, figures, hasher)


def run_source(args: argparse.Namespace, provider: SocketProvider) -> dict[str, Any]:
    """Send the pattern stream; the window runs from connect until the sink has closed.

    Waiting for the sink's FIN means the reported rate counts delivered bytes, not bytes that
    merely reached our send buffer.
    """
    pattern = Pattern(args.seed, args.msg_size)  # before connecting: not part of the measurement
    hasher = None if args.no_hash else hashlib.sha256()
    stream = _connect(args, provider, nodelay=False)
    try:
        meter = Meter.start()
        with phase("send"):
            if args.bytes is not None:
                total = _send_bytes(stream, pattern, args.bytes, args.msg_size, hasher)
            else:
                total = _send_for(stream, pattern, args.duration, args.msg_size, hasher)
        with phase("wait for peer to close"):
            stream.shutdown_write()
            drain_until_eof(stream)
        figures = meter.stop()
        counters = getattr(stream, "tcp_counters", None)
        tcp = counters() if counters is not None else None
    finally:
        stream.close()
    record = _stream_record(args, total, figures, hasher)
    record["seed"] = args.seed
    if tcp is not None:  # the kernel path: its own retransmissions (user-level stacks: theirs)
        record["tcp_retransmits"] = tcp["retransmits"]
        record["tcp_congestion"] = tcp["congestion"]
    return record


def _send_bytes(
    stream: Stream, pattern: Pattern, count: int, msg_size: int, hasher: Any | None
) -> int:
    sent = 0
    while sent < count:
        chunk = pattern.window(sent, min(msg_size, count - sent))
        stream.sendall(chunk)
        if hasher is not None:
            hasher.update(chunk)
        sent += len(chunk)
    return sent


def _send_for(
    stream: Stream, pattern: Pattern, duration: float, msg_size: int, hasher: Any | None
) -> int:
    sent = 0
    clock = time.perf_counter
    end = clock() + duration
    while clock() < end:
        chunk = pattern.window(sent, msg_size)
        stream.sendall(chunk)
        if hasher is not None:
            hasher.update(chunk)
        sent += msg_size
    return sent


def _stream_record(
    args: argparse.Namespace, total: int, figures: dict[str, Any], hasher: Any | None
) -> dict[str, Any]:
    record = base_record(args)
    record.update(
        bytes=total,
        seconds=figures["seconds"],
        mbit_per_s=rate(total * 8, figures["seconds"]) / 1e6,
        sha256=None if hasher is None else hasher.hexdigest(),
        msg_size=args.msg_size,
        cpu_process=figures["cpu_process"],
        cpu_system=figures["cpu_system"],
        ncpus=figures["ncpus"],
    )
    return record


def run_rr_server(args: argparse.Namespace, provider: SocketProvider) -> dict[str, Any]:
    """Answer fixed-size requests until a clean EOF; a torn request is an error."""
    stream = _accept_one(args, provider, nodelay=True)
    request = memoryview(bytearray(args.req_size))
    response = memoryview(bytes(args.resp_size))
    served = 0
    try:
        meter = Meter.start()
        with phase("serve"):
            while recv_exact(stream, request):
                stream.sendall(response)
                served += 1
        figures = meter.stop()
    finally:
        stream.close()
    return _rr_record(args, served, figures, latency_summary_us([]))


def run_rr_client(args: argparse.Namespace, provider: SocketProvider) -> dict[str, Any]:
    """Time request/response round trips; window from connect until the server has closed."""
    request = memoryview(bytes(args.req_size))
    response = memoryview(bytearray(args.resp_size))
    stream = _connect(args, provider, nodelay=True)
    latencies: list[int] = []
    try:
        meter = Meter.start()
        with phase("transact"):
            _transact(stream, request, response, latencies, args.count, args.duration)
        with phase("wait for peer to close"):
            stream.shutdown_write()
            drain_until_eof(stream)
        figures = meter.stop()
    finally:
        stream.close()
    return _rr_record(args, len(latencies), figures, latency_summary_us(latencies))


def _transact(
    stream: Stream,
    request: memoryview,
    response: memoryview,
    latencies: list[int],
    count: int | None,
    duration: float | None,
) -> None:
    """Ping-pong until ``count`` transactions or ``duration`` seconds, whichever was asked."""
    clock = time.perf_counter_ns
    end = clock() + int(duration * 1e9) if duration is not None else None
    record = latencies.append
    while count is None or len(latencies) < count:
        t0 = clock()
        stream.sendall(request)
        if not recv_exact(stream, response):
            raise TrafficError("server closed the connection before responding")
        t1 = clock()
        record(t1 - t0)
        if end is not None and t1 >= end:
            break


def _rr_record(
    args: argparse.Namespace,
    transactions: int,
    figures: dict[str, Any],
    latency: dict[str, float | None],
) -> dict[str, Any]:
    total = transactions * (args.req_size + args.resp_size)
    record = base_record(args)
    record.update(
        bytes=total,
        seconds=figures["seconds"],
        mbit_per_s=rate(total * 8, figures["seconds"]) / 1e6,
        sha256=None,
        transactions=transactions,
        transactions_per_s=rate(transactions, figures["seconds"]),
        latency_us=latency,
        req_size=args.req_size,
        resp_size=args.resp_size,
        cpu_process=figures["cpu_process"],
        cpu_system=figures["cpu_system"],
        ncpus=figures["ncpus"],
    )
    return record


RUNNERS: dict[str, Callable[[argparse.Namespace, SocketProvider], dict[str, Any]]] = {
    "sink": run_sink,
    "source": run_source,
    "rr-server": run_rr_server,
    "rr-client": run_rr_client,
}

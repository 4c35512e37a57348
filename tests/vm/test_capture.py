"""Link capture on a real lab: a pcap taken from the host side shows the experiment's TCP
handshake and data, reads back with tcpdump, and keeps to its size bound."""

from __future__ import annotations

import re
import subprocess

from host.capture import RECORD_HEADER, Bounds, Capture, pcap_records, pcap_summary
from host.ssh import traffic_command

STREAM = "--path kernel --bytes 2000000 --seed 3 --msg-size 50000 --no-hash"


def _stream_through_capture(lab, port: int, out, bounds: Bounds | None = None):
    link = lab.config.link_between("a", "b")
    server_ip = str(link.address_of("b").ip)
    with Capture(lab.state, link.name, out, bounds) as cap:
        sink = lab.guest("b").start(
            traffic_command("sink", f"--path kernel --bind {server_ip} --port {port} --no-hash")
        )
        src = lab.guest("a").run(
            traffic_command(
                "source", f"{STREAM} --peer {server_ip} --port {port} --connect-timeout 60"
            ),
            timeout=180,
        )
        assert src.exit_status == 0, src.stderr
        assert sink.wait(timeout=60).exit_status == 0
    return cap.result


def _tcpdump(path, expr: str = "") -> str:
    proc = subprocess.run(
        ["tcpdump", "-nr", str(path), *expr.split()], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "link-type EN10MB" in proc.stderr
    return proc.stdout


def test_capture_shows_the_streams_handshake_and_data(lab, tmp_path):
    link = lab.config.link_between("a", "b")
    client, server = (str(link.address_of(n).ip) for n in ("a", "b"))
    port = 6201
    result = _stream_through_capture(lab, port, tmp_path / "link.pcap")
    assert result.path.exists() and not result.bound_reached
    assert not list(tmp_path.glob("*.part"))
    assert (result.frames, result.bytes) == pcap_summary(result.path)
    lines = _tcpdump(result.path, f"tcp port {port}").splitlines()
    to_server = f"IP {client}.\\d+ > {server}.{port}:"
    to_client = f"IP {server}.{port} > {client}.\\d+:"
    first = {
        kind: next((i for i, x in enumerate(lines) if re.search(pattern, x)), None)
        for kind, pattern in {
            "syn": f"{to_server} Flags \\[S\\],",
            "syn-ack": f"{to_client} Flags \\[S\\.\\],",
            "ack": f"{to_server} Flags \\[\\.\\], ack 1,",
        }.items()
    }
    assert None not in first.values(), "\n".join(lines[:20])
    assert first["syn"] < first["syn-ack"] < first["ack"], "\n".join(lines[:20])
    data = [x for x in lines if re.search(to_server, x) and not x.endswith("length 0")]
    assert len(data) > 100, "\n".join(lines[:20])


def test_capture_keeps_to_its_size_bound_and_snap_length(lab, tmp_path):
    result = _stream_through_capture(
        lab, 6202, tmp_path / "tiny.pcap", Bounds(max_bytes=4096, snaplen=96)
    )
    assert result.bound_reached
    assert result.path.stat().st_size == result.bytes <= 4096
    assert result.frames > 0
    assert len(_tcpdump(result.path).splitlines()) == result.frames
    records = list(pcap_records(result.path.read_bytes()))
    assert max(end - off - RECORD_HEADER for off, end in records) == 96


def test_an_experiment_with_capture_writes_a_pcap_per_link_next_to_its_result(lab, tmp_path):
    """`capture:` on an experiment: the bench records each link of its route for each run,
    and the run's JSON names the pcap, relative to the result file's folder."""
    from host.bench import BASE_PORT, run_experiments
    from host.config import CaptureOptions

    exp = lab.config.experiment("kernel-stream").model_copy(
        update={"capture": CaptureOptions(), "duration_s": 2.0}
    )
    config = lab.config.model_copy(update={"experiments": [exp]})
    (record,) = run_experiments(
        config, lab.state, lab.guest, capture_dir=tmp_path / "run.captures", progress=print
    )
    (run,) = record["runs"]
    assert "error" not in run, run
    (capture,) = run["captures"]
    assert capture["link"] == exp.link and capture["frames"] > 100
    pcap = tmp_path / capture["pcap"]
    assert pcap.parent == tmp_path / "run.captures" and pcap.exists()
    assert " Flags [S]," in _tcpdump(pcap, f"tcp port {BASE_PORT}")

"""The cross-check of the traffic tool against iperf3 on the same route, kept with the results
so that a nightly gating on the traffic tool can show which figure to believe."""

from __future__ import annotations


def _msg_size(record: dict) -> int:
    """A stream experiment's message size, from its first successful run's own record."""
    for run in record["runs"]:
        client = (run.get("raw") or {}).get("client") or {}
        if "msg_size" in client:
            return int(client["msg_size"])
    return 0


def cross_check(data: dict) -> list[dict]:
    """The traffic tool's kernel stream against iperf3 on the same route, round by round:
    the two should agree, and when they do not, their retransmissions (both from the
    sending kernel's TCP_INFO) and message sizes say why. The kernel stream with the
    largest messages (64 KiB, nearest iperf3's 128 KiB writes) is the one compared."""
    recs = data["results"]
    out = []
    for iperf in (r for r in recs if r["type"] == "iperf3"):
        streams = [
            r
            for r in recs
            if r["type"] == "stream"
            and r["path"] == "kernel"
            and r["route"] == iperf["route"]
            and r.get("mtu") is None
        ]
        if not streams:
            continue
        ours = max(streams, key=_msg_size)
        mine = {r["round"]: r for r in ours["runs"] if "error" not in r}
        theirs = {r["round"]: r for r in iperf["runs"] if "error" not in r}
        for rnd in sorted(set(mine) & set(theirs)):
            a, b = mine[rnd], theirs[rnd]
            out.append(
                {
                    "round": rnd,
                    "stream": ours["experiment"],
                    "stream_mbit": a["mbit_per_s"],
                    "iperf3_mbit": b["mbit_per_s"],
                    "ratio": b["mbit_per_s"] / a["mbit_per_s"] if a["mbit_per_s"] else None,
                    "stream_retransmits": a.get("retransmits"),
                    "iperf3_retransmits": b.get("retransmits"),
                }
            )
    return out

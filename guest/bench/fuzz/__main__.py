"""A long fuzz run as a benchmark: `python3 -m guest.bench.fuzz --seconds 60 --seed 1`.

The command line: options, the report as one JSON line and a table, and on a failure the seed,
frame index and frame that reproduce it (`--replay SEED:INDEX`, `--frame-hex`). What is run
and checked is in `bench.py`; the frames come from `guest.testing.fuzz_frames`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from guest.bench.fuzz.bench import run_fuzz
from guest.testing.fuzz_frames import MUTATORS


def format_table(report: dict[str, object]) -> str:
    """The report for people."""
    lines = []
    add = lines.append
    add(
        f"core fuzz, seed {report['seed']}: {report['frames']:,} frames in "
        f"{report['elapsed_s']:.1f} s ({report['frames_per_s']:,.0f} frames/s), "
        f"{report['sim_time_s']:,.0f} s simulated"
    )
    mutators: dict[str, int] = report["mutators"]  # type: ignore[assignment]
    cases: dict[str, int] = report["mutator_cases"]  # type: ignore[assignment]
    cpu: dict[str, float] = report["cpu_us_per_frame"]  # type: ignore[assignment]
    cpu_max: dict[str, float] = report["cpu_max_ms"]  # type: ignore[assignment]
    add(f"  {'mutator':14s} {'frames':>10s} {'cases':>10s} {'cpu us/frame':>13s} {'max ms':>8s}")
    for name in MUTATORS:
        add(
            f"  {name:14s} {mutators.get(name, 0):>10,} {cases.get(name, 0):>10,} "
            f"{cpu.get(name, 0.0):>13.1f} {cpu_max.get(name, 0.0):>8.2f}"
        )
    add(f"  drops: {report['drops_total']:,} in {report['drop_reasons']} reasons; top:")
    top: dict[str, int] = report["drops_top"]  # type: ignore[assignment]
    for reason, count in list(top.items())[:10]:
        add(f"    {reason:34s} {count:>10,}")
    live: dict[str, object] = report["live"]  # type: ignore[assignment]
    add(
        f"  live connection: {live.get('state')}, bytes in {live.get('bytes_in', 0):,} "
        f"out {live.get('bytes_out', 0):,}; {live['connections']} connections, "
        f"replaced: {live['reconnects'] or 'never'}"
    )
    post = report.get("post_fuzz")
    if isinstance(post, dict):
        add("  after the fuzzing: " + ", ".join(f"{k} {v}" for k, v in post.items() if k != "ok"))
    add(f"  internal errors: {report['internal_errors']}")
    failure = report.get("failure")
    if isinstance(failure, dict):
        add(
            f"  FAILED ({failure['what']} at frame {failure['index']}, "
            f"{failure['mutator']}/{failure['kind']}): {failure['detail']}"
        )
        add(f"  replay: python3 -m guest.bench.fuzz {failure['replay']}")
    else:
        add("  result: PASS" if report["ok"] else "  result: FAIL")
    return "\n".join(lines)


def _parse_replay(text: str) -> tuple[int, int]:
    seed, sep, index = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected SEED:INDEX")
    return int(seed), int(index)


def main(
    argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = argparse.ArgumentParser(
        prog="python3 -m guest.bench.fuzz", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time to fuzz")
    parser.add_argument("--frames", type=int, help="fuzz this many frames instead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--replay", type=_parse_replay, metavar="SEED:INDEX", help="re-run up to one frame"
    )
    parser.add_argument("--frame-hex", help="feed one frame (hex) to a fresh testbed")
    parser.add_argument("--checksum-ok", action="store_true", help="with --frame-hex")
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between updates")
    parser.add_argument("--hang", type=float, default=30.0, help="wall seconds a step may take")
    parser.add_argument("--no-verify", action="store_true", help="skip the post-fuzz checks")
    args = parser.parse_args(argv)
    seed, replay = args.replay if args.replay is not None else (args.seed, None)
    report = run_fuzz(
        seed,
        frames=args.frames,
        seconds=args.seconds,
        replay=replay,
        verify=not args.no_verify,
        progress=err,
        progress_every=args.progress,
        hang_seconds=args.hang,
        frame_hex=args.frame_hex,
        checksum_ok=args.checksum_ok,
    )
    failure = report.get("failure")
    if isinstance(failure, dict):
        print(f"FAIL seed={seed} index={failure['index']} stage={failure['stage']}", file=err)
        print(
            f"  mutator={failure['mutator']} kind={failure['kind']} "
            f"checksum_ok={failure['checksum_ok']} what={failure['what']}",
            file=err,
        )
        if "traceback" in failure:
            print(failure["traceback"], file=err)
        print(f"  {failure['detail']}", file=err)
        print(f"  frame ({failure['frame_len']} bytes): {failure['frame_hex']}", file=err)
        print(f"  replay: python3 -m guest.bench.fuzz {failure['replay']}", file=err)
    print(json.dumps(report, sort_keys=False), file=out)
    print(format_table(report), file=out)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

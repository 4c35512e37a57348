"""The long fuzz benchmark (`guest.bench.fuzz`) in miniature.

A couple of thousand frames per seed keep the bench itself honest: every mutator runs, the
stack survives with no internal error, the post-fuzz transfer works, a seed repeats its run
exactly (which `--replay` relies on), and a crash inside the stack fails the run with the seed,
frame index and frame that reproduce it, instead of being lost in a counter.
"""

from __future__ import annotations

import pytest

from guest.bench.fuzz.__main__ import main
from guest.bench.fuzz.bench import run_fuzz
from guest.stack.core.udp import UdpTable
from guest.testing.fuzz_frames import MUTATORS, UDP_PORT

FRAMES = 2500


@pytest.mark.parametrize("seed", [1, 2])
def test_short_run_survives_and_the_stack_still_works(seed: int) -> None:
    report = run_fuzz(seed, frames=FRAMES)
    assert report["failure"] is None, report["failure"]
    assert report["ok"]
    assert report["internal_errors"] == 0
    assert report["frames"] >= FRAMES
    mutators = report["mutators"]
    assert isinstance(mutators, dict)
    assert set(mutators) == set(MUTATORS)
    assert all(mutators[name] > 0 for name in MUTATORS), mutators
    post = report["post_fuzz"]
    assert isinstance(post, dict)
    assert post["ok"]
    # The live connection carried a fresh chunk, or the fuzz legitimately broke it and the
    # new connection through the attacked listener did; that one must always work.
    assert post["live"] == "ok" or not str(post["live"]).startswith("FAILED")
    assert post["listener"] == "ok"
    assert post["udp"] == "ok"
    assert post["ping"] == "ok"


def test_a_seed_repeats_its_run_exactly() -> None:
    first = run_fuzz(3, frames=800, verify=False)
    second = run_fuzz(3, frames=800, verify=False)
    for key in ("frames", "cases", "mutators", "kinds", "drops_top", "stack", "sim_time_s"):
        assert first[key] == second[key], key


def test_a_crash_in_the_stack_fails_the_run_with_what_replays_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deliver = UdpTable.deliver

    def crash_on_the_bound_port(
        self: UdpTable, dst_port: int, data: memoryview | bytes, src: int, src_port: int
    ) -> int:
        if dst_port == UDP_PORT:  # only fuzz frames go there while fuzzing
            raise RuntimeError("injected crash")
        return deliver(self, dst_port, data, src, src_port)

    monkeypatch.setattr(UdpTable, "deliver", crash_on_the_bound_port)
    report = run_fuzz(4, frames=FRAMES)
    assert not report["ok"]
    failure = report["failure"]
    assert isinstance(failure, dict)
    assert failure["what"] == "exception"
    assert failure["stage"] == "receive"
    assert failure["seed"] == 4
    assert 1 <= failure["index"] <= FRAMES
    assert "injected crash" in failure["traceback"]
    assert failure["frame_hex"]
    assert failure["replay"] == f"--replay 4:{failure['index']}"

    # Replaying runs the same frames up to that index and fails on the same one.
    again = run_fuzz(4, replay=failure["index"])
    assert isinstance(again["failure"], dict)
    assert again["failure"]["index"] == failure["index"]
    assert again["failure"]["frame_hex"] == failure["frame_hex"]

    # The command line exits with 1 and names seed, index and frame.
    assert main(["--frames", str(FRAMES), "--seed", "4", "--hang", "0", "--progress", "60"]) == 1
    err = capsys.readouterr().err
    assert f"FAIL seed=4 index={failure['index']}" in err
    assert failure["frame_hex"] in err
    assert f"--replay 4:{failure['index']}" in err

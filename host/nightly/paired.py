"""Same-night baselines: a baseline revision's guest code measured round by round beside the
candidate's, in the same lab, so that the host's drift cancels in each round's ratio.

Between nights this host's figures drift by 17-25 % (stop 21's A/A nights), more than the
10 % slowdown a nightly must see; within one round, minutes apart, they hardly do. So each
round runs the experiments once with each revision's guest code deployed, alternating which
goes first (C B, B C, C B, ...: a drift within a round falls on both arms alike over two
rounds, and one deployment in two is saved). Only the guest code (what runs in the VMs)
comes from the baseline revision; the host side is this tree's, so a host change is not
measured by it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from host.bench import extend, git_output
from host.paths import PROJECT_ROOT
from host.ssh import GuestError

CANDIDATE, BASELINE = "candidate", "baseline"

#: One round (its number) of the selected experiments (names, or None for all) with an arm's
#: code deployed (its name, for the progress lines), as run_experiments gives its records.
RunRound = Callable[[list[str] | None, int, str], list[dict]]


class RevisionError(ValueError):
    """A baseline revision that cannot be used: named with git's reason."""


def resolve(rev: str) -> str:
    """The full commit `rev` names in this repository, or RevisionError saying why not."""
    commit = git_output("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if not commit:
        raise RevisionError(f"--baseline-rev {rev!r}: not a commit of {PROJECT_ROOT}")
    if git_output("cat-file", "-e", f"{commit}:guest") is None:
        raise RevisionError(f"--baseline-rev {rev!r}: commit {commit[:10]} has no guest/ folder")
    return commit


def revision_tarball(commit: str) -> bytes:
    """`guest/` of `commit` as a gzipped tarball, straight from git (no folder on the host,
    so nothing is left behind however the run ends)."""
    proc = subprocess.run(
        ["git", "archive", "--format=tar.gz", commit, "guest"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=False,
    )
    return proc.stdout if proc.returncode == 0 else b""


def arm_order(round_no: int, first_round: int = 1) -> tuple[str, str]:
    """Which arm runs first in a round: the candidate in the first, then alternately."""
    return (CANDIDATE, BASELINE) if (round_no - first_round) % 2 == 0 else (BASELINE, CANDIDATE)


def run_paired(
    run_round: RunRound,
    deploy: dict[str, Callable[[], None]],
    rounds: int,
    only: list[str] | None = None,
    first_round: int = 1,
    progress: Callable[[str], None] = print,
    into: dict[str, list[dict]] | None = None,
    faults: list[str] | None = None,
) -> dict[str, list[dict]]:
    """`rounds` rounds of both arms (`deploy[arm]()` puts an arm's code on every guest),
    each round's records of an arm added to that arm's (`into`, extended in place if given:
    a confirming rerun continues the night's). Returns the records by arm.

    A deployment that fails (a guest lost) ends the rounds there, said in `faults`: what
    both arms measured so far is kept, and is compared over the rounds both completed."""
    out: dict[str, list[dict]] = into if into is not None else {CANDIDATE: [], BASELINE: []}
    deployed: str | None = None
    for round_no in range(first_round, first_round + rounds):
        for arm in arm_order(round_no, first_round):
            if arm != deployed:
                progress(f"round {round_no}: deploying the {arm}'s guest code")
                try:
                    deploy[arm]()
                except GuestError as err:
                    fault = f"round {round_no}: deploying the {arm}'s guest code: {err}"
                    progress(f"FAULT: {fault}; the rounds end here")
                    if faults is not None:
                        faults.append(fault)
                    return out
                deployed = arm
            records = run_round(only, round_no, arm)
            if out[arm]:
                extend(out[arm], records)
            else:
                out[arm] = records
    return out

"""A same-night baseline on real VMs (`invoke nightly --baseline-rev`): the baseline
revision's guest code really runs in its arm. The revision is made for the test, without
touching the repository: this tree's guest code with the stacks' fault-injection knob on by
default (20 ms per received frame), its git objects in a folder of the test's own that git
reads as an alternate. If the nightly ran this tree's code in both arms, the two would
measure alike; it must find the candidate's mono rr far faster than the baseline's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from host.paths import PROJECT_ROOT
from tests.vm.conftest import unique_lab_name
from tests.vm.leftovers import domains_of
from tests.vm.test_faults import invoke

LAB = """\
lab: {name}
nodes: [{{name: a}}, {{name: b}}]
links:
  - endpoints: [a, b]
experiments:
  - {{name: kernel-rr, type: rr, path: kernel, client: a, server: b, duration_s: 2}}
  - {{name: mono-rr, type: rr, path: mono, baseline: kernel-rr, client: a, server: b,
      duration_s: 2}}
"""

OPTIONS = "guest/stack/options.py"
KNOB_OFF = '"--inject-rx-us",\n        type=float,\n        default=0.0,'
KNOB_ON = '"--inject-rx-us",\n        type=float,\n        default=20000.0,'


def slowed_revision(objects: Path) -> str:
    """A commit whose guest code is HEAD's with the knob on, its objects in `objects`."""
    repo_objects = subprocess.run(
        ["git", "rev-parse", "--git-path", "objects"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {
        **os.environ,
        "GIT_OBJECT_DIRECTORY": str(objects),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(PROJECT_ROOT / repo_objects),
        "GIT_INDEX_FILE": str(objects.parent / "index"),
    }

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=PROJECT_ROOT,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    source = git("show", f"HEAD:{OPTIONS}")
    assert KNOB_OFF in source, "the knob's declaration moved: update this test"
    blob = git("hash-object", "-w", "--stdin", stdin=source.replace(KNOB_OFF, KNOB_ON) + "\n")
    git("read-tree", "HEAD")
    git("update-index", "--cacheinfo", f"100644,{blob},{OPTIONS}")
    tree = git("write-tree")
    return git("commit-tree", tree, "-p", "HEAD", "-m", "test: the knob on by default")


def test_the_baseline_revisions_guest_code_runs_in_its_arm(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    objects.mkdir()
    commit = slowed_revision(objects)
    name = unique_lab_name("tp")
    config = tmp_path / "paired.yaml"
    config.write_text(LAB.format(name=name))
    out = tmp_path / "night"
    args = ["nightly", "--configs", str(config), "--tiers", "none", "--rounds", "3"]
    args += ["--confirm", "0", "--history", "none", "--out", str(out)]
    proc = invoke(
        *args,
        "--baseline-rev",
        commit,
        env={"GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects)},
    )
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:]
    assert "deploying the baseline's guest code" in stdout
    saved = json.loads((out / "results.json").read_text())
    night = saved["nightly"]
    assert night["baseline_rev"] == commit and night["method"] == "paired rounds, same night"
    (base,) = saved["baseline_labs"]
    (cand,) = saved["labs"]
    assert base["metadata"]["git_commit"] == commit
    for data in (base, cand):
        for rec in data["results"]:
            assert not rec["errors"], rec["errors"]
            assert sorted(r["round"] for r in rec["runs"]) == [1, 2, 3]
    by_name = {c["name"]: c for c in night["comparisons"]}
    mono = by_name[f"{name}/mono-rr · p50 latency/kernel"]
    assert mono["method"] == "paired-t"
    assert mono["ratio"] < 0.5 and mono["verdict"] == "improved", mono
    kernel = by_name[f"{name}/kernel-rr · p50 latency"]  # the knob is in our stacks only
    assert 0.5 < kernel["ratio"] < 2.0, kernel
    assert domains_of(name) == []

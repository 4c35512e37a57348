"""The CI files (.github/workflows/nightly.yml, pr.yml, .gitlab-ci.yml) hold, offline.

Nothing runs these files before they land: a mistake shows up only when GitHub or GitLab refuses
the file, or, worse, accepts it and quietly skips what mattered (the nightly's report not
uploaded after a failure, a tier never run). So each file is checked twice: against its
service's JSON schema (check-jsonschema's vendored copies, with the network cut off, so the
check never depends on a download), and for the shape this project relies on. Negative controls
prove that both checks can fail: a broken copy must be rejected by the schema, a mutated copy
must be reported by the shape check.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NIGHTLY = ROOT / ".github" / "workflows" / "nightly.yml"
PR = ROOT / ".github" / "workflows" / "pr.yml"
GITLAB = ROOT / ".gitlab-ci.yml"

# The test tiers, by their pytest marker expression (pyproject.toml registers the markers).
TIERS = {"unit": "not vm and not netns", "netns": "netns", "vm": "vm"}
ROOT_TIERS = ("netns", "vm")  # network namespaces and qemu:///system need root
SCHEDULE = '$CI_PIPELINE_SOURCE == "schedule"'
GITLAB_KEYWORDS = {
    "after_script",
    "before_script",
    "cache",
    "default",
    "image",
    "include",
    "services",
    "spec",
    "stages",
    "variables",
    "workflow",
}

Doc = dict[str, Any]


# --- the validator: check-jsonschema with the network cut off ---------------------------------

# Run check-jsonschema's command line with every way out to the network refused: a builtin
# schema that tried to fetch a `$ref` (or a remote --schemafile) fails instead of downloading.
_OFFLINE_MAIN = textwrap.dedent(
    """
    import runpy, socket, sys

    def _refuse(*args, **kwargs):
        raise OSError("network disabled by tests/unit/test_ci_files.py")

    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.getaddrinfo = _refuse
    socket.create_connection = _refuse
    sys.argv[0] = "check-jsonschema"
    runpy.run_module("check_jsonschema", run_name="__main__", alter_sys=True)
    """
)


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    """check-jsonschema's command line, offline; its own stable interface, not its internals."""
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail(
            "check-jsonschema is not installed in this venv (a dev dependency): "
            "`.venv/bin/pip install 'check-jsonschema>=0.28,<1'`"
        )
    return subprocess.run(
        [sys.executable, "-c", _OFFLINE_MAIN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def validate(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return check_jsonschema("--builtin-schema", schema, str(path))


# --- loading and small helpers ----------------------------------------------------------------


def load_workflow(path: Path) -> Doc:
    """A GitHub workflow; YAML 1.1 reads the key `on` as the boolean True, so it is put back."""
    doc = yaml.safe_load(path.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def load_gitlab(path: Path = GITLAB) -> Doc:
    return yaml.safe_load(path.read_text())


def norm_path(value: object) -> str:
    """`./nightly/` and `nightly` name the same folder."""
    return str(value or "").strip().removeprefix("./").rstrip("/")


def norm_expr(value: object) -> str:
    """A rule's condition with its spacing and quoting evened out."""
    return re.sub(r"\s+", " ", str(value or "")).replace("'", '"').strip()


def labels(runs_on: object) -> set[str]:
    if isinstance(runs_on, str):
        return {runs_on}
    if isinstance(runs_on, dict):
        return labels(runs_on.get("labels"))
    return {str(label) for label in runs_on or []}


def always(step: Doc) -> bool:
    return "always()" in str(step.get("if", ""))


def uses(step: Doc, action: str) -> bool:
    """Whether the step uses `action` (any version)."""
    return str(step.get("uses", "")).split("@")[0] == action


def pytest_commands(script: str) -> Iterator[list[str]]:
    """The words of each pytest command line in a shell script."""
    for line in script.replace("\\\n", " ").splitlines():
        if "pytest" not in line:
            continue
        words = shlex.split(line, comments=True)
        if any(Path(word).name == "pytest" for word in words):
            yield words


def marker_expr(words: list[str]) -> str | None:
    """The `-m` expression given to pytest (after the word `pytest`, not python's `-m`)."""
    start = next(i for i, word in enumerate(words) if Path(word).name == "pytest")
    rest = words[start + 1 :]
    return rest[rest.index("-m") + 1] if "-m" in rest[:-1] else None


def junit_path(words: list[str]) -> str | None:
    for i, word in enumerate(words):
        if word.startswith("--junitxml="):
            return word.split("=", 1)[1]
        if word == "--junitxml" and i + 1 < len(words):
            return words[i + 1]
    return None


def option_value(script: str, option: str, env: dict[str, Any]) -> str | None:
    """The value given to `option` in a script, with a `$VAR` / `${VAR}` prefix resolved."""
    match = re.search(rf"{re.escape(option)}[ =]+\"?([^\"\s)]+)", script)
    if match is None:
        return None
    return re.sub(r"\$\{?(\w+)\}?", lambda m: str(env.get(m.group(1), m.group(0))), match.group(1))


# --- the nightly workflow's shape -------------------------------------------------------------


def nightly_step(doc: Doc) -> tuple[str, Doc, int]:
    """(job name, job, index of the step that runs `invoke nightly`); exactly one such step."""
    found = [
        (name, job, i)
        for name, job in (doc.get("jobs") or {}).items()
        for i, step in enumerate(job.get("steps") or [])
        if "invoke nightly" in str(step.get("run", ""))
    ]
    assert len(found) == 1, f"{len(found)} steps run `invoke nightly`, expected one"
    return found[0]


def nightly_problems(doc: Doc) -> list[str]:
    """What the nightly workflow lacks of what the project relies on; [] when it has it all."""
    problems: list[str] = []
    on = doc.get("on") if isinstance(doc.get("on"), dict) else {}
    if not any(isinstance(s, dict) and s.get("cron") for s in on.get("schedule") or []):
        problems.append("no cron schedule")
    if "workflow_dispatch" not in on:
        problems.append("cannot be started by hand (workflow_dispatch)")
    name, job, at = nightly_step(doc)
    steps: list[Doc] = job["steps"]
    step = steps[at]
    run = str(step["run"])
    before, after = steps[:at], steps[at + 1 :]
    env = {**(doc.get("env") or {}), **(job.get("env") or {}), **(step.get("env") or {})}

    if not {"self-hosted", "kvm"} <= labels(job.get("runs-on")):
        problems.append(f"job {name} does not run on a self-hosted runner labelled kvm")
    if not job.get("timeout-minutes"):
        problems.append(f"job {name} has no timeout-minutes")
    checkouts = [s for s in before if uses(s, "actions/checkout")]
    if not checkouts or (checkouts[0].get("with") or {}).get("fetch-depth") != 0:
        problems.append("checkout without fetch-depth: 0 (the whole history)")
    if not any("quickstart.sh setup" in str(s.get("run", "")) for s in before):
        problems.append("no ./quickstart.sh setup before the nightly")

    images = [
        s
        for s in before
        if uses(s, "actions/cache")
        and norm_path((s.get("with") or {}).get("path")) == ".stackbed/images"
    ]
    key = str((images[0].get("with") or {}).get("key", "")) if images else ""
    if "hashFiles(" not in key or "images/**" not in key:
        problems.append("the guest image (.stackbed/images) is not cached by a hash of images/")

    restores = [
        s
        for s in before
        if (uses(s, "actions/cache/restore") or uses(s, "actions/cache"))
        and "github.run_id" in str((s.get("with") or {}).get("key", ""))
        and (s.get("with") or {}).get("restore-keys")
    ]
    if not restores:
        problems.append("the last baseline is not restored (cache keyed by run id, restore-keys)")
    saves = [s for s in after if uses(s, "actions/cache/save") and always(s)]
    if not saves:
        problems.append("the baseline and history are not saved after the nightly (if: always())")

    out = option_value(run, "--out", env)
    if out is None:
        return [*problems, "`invoke nightly` is not given --out"]
    out = norm_path(out)
    if "--baseline" not in run:
        problems.append("`invoke nightly` is never given --baseline")
    if "id" not in step or "GITHUB_OUTPUT" not in run:
        problems.append("the nightly's exit code is not kept as a step output")
    if step.get("continue-on-error"):
        problems.append("continue-on-error hides the nightly's exit code")

    if not any(
        uses(s, "actions/upload-artifact")
        and always(s)
        and norm_path((s.get("with") or {}).get("path")) == out
        for s in after
    ):
        problems.append(f"the output folder {out}/ is not uploaded with if: always()")
    if not any(
        "junit" in str(s.get("uses", ""))
        and always(s)
        and f"{out}/junit.xml" in str((s.get("with") or {}).get("report_paths", ""))
        for s in after
    ):
        problems.append(f"{out}/junit.xml is not published with if: always()")
    if not any(
        always(s)
        and "summary.md" in str(s.get("run", ""))
        and "GITHUB_STEP_SUMMARY" in str(s.get("run", ""))
        for s in after
    ):
        problems.append("summary.md is not added to $GITHUB_STEP_SUMMARY with if: always()")
    last = steps[-1]
    if not (
        always(last)
        and "exit" in str(last.get("run", ""))
        and f"steps.{step.get('id')}.outputs.rc" in str(last)
    ):
        problems.append("the last step does not fail the job with the nightly's exit code")
    return problems


# --- the pull-request workflow's shape --------------------------------------------------------


def pr_problems(doc: Doc) -> list[str]:
    """What the pull-request workflow lacks: every tier, on a hosted runner, reported."""
    problems: list[str] = []
    on = doc.get("on") if isinstance(doc.get("on"), dict) else {}
    if "pull_request" not in on:
        problems.append("not run on pull requests")
    if "main" not in ((on.get("push") or {}).get("branches") or []):
        problems.append("not run on pushes to main")
    steps = [
        (name, job, step)
        for name, job in (doc.get("jobs") or {}).items()
        for step in job.get("steps") or []
    ]
    for name, job, _ in steps:
        if "self-hosted" in labels(job.get("runs-on")) or not job.get("timeout-minutes"):
            problems.append(f"job {name} is not on a hosted runner with a timeout")
    if not any("quickstart.sh setup" in str(step.get("run", "")) for _, _, step in steps):
        problems.append("no ./quickstart.sh setup")

    commands = {
        marker_expr(words): words
        for _, _, step in steps
        for words in pytest_commands(str(step.get("run", "")))
    }
    reports: list[str] = []
    for tier, expr in TIERS.items():
        words = commands.get(expr)
        if words is None:
            problems.append(f"tier {tier} (-m {expr!r}) is not run")
            continue
        if junit_path(words) is None:
            problems.append(f"tier {tier} writes no --junitxml")
        else:
            reports.append(norm_path(junit_path(words)))
        if tier in ROOT_TIERS and words[0] != "sudo":
            problems.append(f"tier {tier} is not run as root (sudo)")

    uploads = [
        norm_path((s.get("with") or {}).get("path"))
        for _, _, s in steps
        if uses(s, "actions/upload-artifact") and always(s)
    ]
    published = [
        str((s.get("with") or {}).get("report_paths", ""))
        for _, _, s in steps
        if "junit" in str(s.get("uses", "")) and always(s)
    ]
    for report in reports:
        if not any(report == up or report.startswith(f"{up}/") for up in uploads):
            problems.append(f"{report} is not uploaded with if: always()")
        if not any(fnmatch.fnmatch(report, pattern) for pattern in published):
            problems.append(f"{report} is not published with if: always()")
    return problems


# --- the GitLab pipeline's shape --------------------------------------------------------------


def deep_merge(base: Doc, over: Doc) -> Doc:
    """GitLab's `extends`: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def gitlab_job(doc: Doc, name: str) -> Doc:
    """A job with what it `extends` merged in."""
    job = doc[name]
    parents = job.get("extends") or []
    merged: Doc = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = deep_merge(merged, gitlab_job(doc, parent))
    return deep_merge(merged, {k: v for k, v in job.items() if k != "extends"})


def gitlab_jobs(doc: Doc) -> dict[str, Doc]:
    return {
        name: gitlab_job(doc, name)
        for name in doc
        if name not in GITLAB_KEYWORDS and not name.startswith(".")
    }


def script_of(job: Doc) -> str:
    lines = [*(job.get("before_script") or []), *(job.get("script") or [])]
    return "\n".join(str(line) for line in lines)


def cache_paths(job: Doc) -> list[tuple[str, Doc]]:
    caches = job.get("cache") or []
    return [
        (norm_path(path), cache)
        for cache in ([caches] if isinstance(caches, dict) else caches)
        for path in cache.get("paths") or []
    ]


def junit_reports(job: Doc) -> list[str]:
    junit = ((job.get("artifacts") or {}).get("reports") or {}).get("junit") or []
    return [norm_path(p) for p in ([junit] if isinstance(junit, str) else junit)]


def gitlab_problems(doc: Doc) -> list[str]:
    """What the GitLab pipeline lacks: a schedule-only nightly, every tier, junit reports."""
    problems: list[str] = []
    workflow_rules = (doc.get("workflow") or {}).get("rules")
    if workflow_rules is not None and not any(
        norm_expr(rule.get("if")) == SCHEDULE and rule.get("when") != "never"
        for rule in workflow_rules
    ):
        problems.append("workflow:rules keep scheduled pipelines from running at all")
    jobs = gitlab_jobs(doc)
    nightlies = [name for name, job in jobs.items() if "invoke nightly" in script_of(job)]
    if len(nightlies) != 1:
        return [*problems, f"{len(nightlies)} jobs run `invoke nightly`, expected one"]
    name = nightlies[0]
    job = jobs[name]
    script = script_of(job)
    runnable = [rule for rule in job.get("rules") or [] if rule.get("when") != "never"]
    if not runnable or any(norm_expr(rule.get("if")) != SCHEDULE for rule in runnable):
        problems.append(f"job {name} does not run on schedules only")
    if "kvm" not in (job.get("tags") or []):
        problems.append(f"job {name} is not tagged kvm")
    if not job.get("timeout"):
        problems.append(f"job {name} has no timeout")
    env = job.get("variables") or {}
    out = option_value(script, "--out", env)
    history = option_value(script, "--history", env)
    if out is None or history is None or "--baseline" not in script:
        problems.append(f"job {name} does not give invoke nightly --out, --history, --baseline")
    out = norm_path(out)
    artifacts = job.get("artifacts") or {}
    if artifacts.get("when") != "always" or not artifacts.get("expire_in"):
        problems.append(f"job {name} does not keep its artifacts always, with an expiry")
    if out not in [norm_path(p) for p in artifacts.get("paths") or []]:
        problems.append(f"job {name} does not keep {out}/ as artifacts")
    if f"{out}/junit.xml" not in junit_reports(job):
        problems.append(f"job {name} does not declare {out}/junit.xml as its junit report")
    cached = {path: cache for path, cache in cache_paths(job)}
    if ".stackbed/images" not in cached:
        problems.append(f"job {name} does not cache the guest image")
    state = norm_path(Path(history).parent) if history else ""
    if state not in cached or cached[state].get("when") != "always":
        problems.append(f"job {name} does not cache {state or 'its state'}/ with when: always")

    tiers = {
        marker_expr(words): (job_name, tier_job, words)
        for job_name, tier_job in jobs.items()
        for words in pytest_commands(script_of(tier_job))
    }
    for tier, expr in TIERS.items():
        if expr not in tiers:
            problems.append(f"no job runs tier {tier} (-m {expr!r})")
            continue
        job_name, tier_job, words = tiers[expr]
        report = norm_path(junit_path(words))
        if not any(fnmatch.fnmatch(report, p) for p in junit_reports(tier_job)):
            problems.append(f"job {job_name} does not declare its {report} as a junit report")
        if (tier_job.get("artifacts") or {}).get("when") != "always":
            problems.append(f"job {job_name} does not keep its artifacts always")
        first = (tier_job.get("rules") or [{}])[0]
        if norm_expr(first.get("if")) != SCHEDULE or first.get("when") != "never":
            problems.append(f"job {job_name} also runs on schedules (the nightly covers it)")
        if tier in ROOT_TIERS and "privileged" not in (tier_job.get("tags") or []):
            problems.append(f"job {job_name} is not on a privileged runner")
        if not str(tier_job.get("image", "")).startswith("debian:12"):
            problems.append(f"job {job_name} does not run in debian:12")
    return problems


# --- schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        (NIGHTLY, "vendor.github-workflows"),
        (PR, "vendor.github-workflows"),
        (GITLAB, "vendor.gitlab-ci"),
        # check-jsonschema's own rule: every job has a timeout-minutes.
        (NIGHTLY, "custom.github-workflows-require-timeout"),
        (PR, "custom.github-workflows-require-timeout"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_ci_file_is_valid_under_its_schema_offline(path: Path, schema: str) -> None:
    """What the service itself would refuse, caught before it lands."""
    proc = validate(schema, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation done" in proc.stdout


def test_the_validator_really_runs_offline() -> None:
    """The cut-off works: a schema that must be downloaded fails, so the checks above that
    passed used nothing but the vendored schemas."""
    proc = check_jsonschema("--schemafile", "https://schemas.invalid/ci.json", str(NIGHTLY))
    assert proc.returncode != 0
    assert "network disabled" in proc.stdout + proc.stderr


def _drop_runs_on(text: str) -> str:
    return re.sub(r"(?m)^\s+runs-on:.*\n", "", text)


def _misspell_on(text: str) -> str:
    return re.sub(r"(?m)^on:", "onn:", text)


def _drop_timeouts(text: str) -> str:
    return re.sub(r"(?m)^\s+timeout-minutes:.*\n", "", text)


def _bad_artifacts_when(text: str) -> str:
    return re.sub(r"(?m)^(\s+)when: always$", r"\1when: sometimes", text)


@pytest.mark.parametrize(
    ("source", "schema", "break_it", "message"),
    [
        (NIGHTLY, "vendor.github-workflows", _drop_runs_on, "not valid"),
        (NIGHTLY, "vendor.github-workflows", _misspell_on, "'on' is a required property"),
        (PR, "custom.github-workflows-require-timeout", _drop_timeouts, "timeout-minutes"),
        (GITLAB, "vendor.gitlab-ci", _bad_artifacts_when, "'sometimes' is not one of"),
    ],
    ids=["runs-on-removed", "on-misspelled", "timeout-removed", "gitlab-bad-when"],
)
def test_a_broken_copy_is_rejected(
    tmp_path: Path, source: Path, schema: str, break_it: Callable[[str], str], message: str
) -> None:
    """Negative control: the validator can fail, so its passing above means something."""
    text = source.read_text()
    broken = break_it(text)
    assert broken != text, "the mutation did not apply: the control would prove nothing"
    copy_path = tmp_path / source.name.lstrip(".")
    copy_path.write_text(broken)
    proc = validate(schema, copy_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr


# --- shapes -----------------------------------------------------------------------------------


def test_nightly_workflow_has_the_shape_the_project_relies_on() -> None:
    """On a kvm runner, `invoke nightly` against the last baseline; the image cached by its
    recipe; output uploaded and published whatever happened; the job failed last."""
    assert nightly_problems(load_workflow(NIGHTLY)) == []


def test_pr_workflow_runs_every_tier() -> None:
    """unit, netns and vm, the root ones under sudo, each with a JUnit file that is kept."""
    assert pr_problems(load_workflow(PR)) == []


def test_gitlab_pipeline_has_a_schedule_only_nightly_and_every_tier() -> None:
    """The nightly on schedules only, on the kvm runner, with its junit report; the tiers on
    merge requests and branches, each with its junit report."""
    assert gitlab_problems(load_gitlab()) == []


def test_workflow_on_key_is_read_as_on() -> None:
    """PyYAML reads `on:` as True; the loader puts it back, or every trigger check is vacuous."""
    raw = yaml.safe_load(NIGHTLY.read_text())
    assert True in raw and "on" not in raw
    assert "schedule" in load_workflow(NIGHTLY)["on"]


def test_tier_markers_are_registered_in_pyproject() -> None:
    """A renamed marker would make a tier select nothing (or everything) without an error."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = config["tool"]["pytest"]["ini_options"]["markers"]
    registered = {marker.split(":")[0].strip() for marker in markers}
    used = {word for expr in TIERS.values() for word in expr.split() if word not in {"and", "not"}}
    assert used <= registered


def test_quickstart_commands_used_by_ci_exist() -> None:
    """The CI files call `./quickstart.sh setup`; the script must still accept that command."""
    script = (ROOT / "quickstart.sh").read_text()
    case = script[script.index('case "${1:-}" in') : script.index("esac")]
    accepted = set(re.findall(r"(?m)^\s*(\w+)\)", case))
    used = {
        command
        for path in (NIGHTLY, PR, GITLAB)
        for command in re.findall(r"\./quickstart\.sh\s+(\w+)", path.read_text())
    }
    assert used, "no CI file calls quickstart.sh"
    assert used <= accepted, f"not accepted by quickstart.sh: {used - accepted}"


# --- negative controls for the shape checks ---------------------------------------------------


def _nightly_steps(doc: Doc) -> list[Doc]:
    _, job, _ = nightly_step(doc)
    return job["steps"]


def _upload_not_always(doc: Doc) -> None:
    for step in _nightly_steps(doc):
        if uses(step, "actions/upload-artifact"):
            step.pop("if", None)


def _hosted_runner(doc: Doc) -> None:
    _, job, _ = nightly_step(doc)
    job["runs-on"] = "ubuntu-latest"


def _image_key_without_hash(doc: Doc) -> None:
    for step in _nightly_steps(doc):
        if norm_path((step.get("with") or {}).get("path")) == ".stackbed/images":
            step["with"]["key"] = "stackbed-image"


def _exit_code_swallowed(doc: Doc) -> None:
    _nightly_steps(doc).pop()


def _no_vm_tier(doc: Doc) -> None:
    for job in doc["jobs"].values():
        job["steps"] = [s for s in job["steps"] if "-m vm" not in str(s.get("run", ""))]


def _netns_not_root(doc: Doc) -> None:
    for job in doc["jobs"].values():
        for step in job["steps"]:
            if "-m netns" in str(step.get("run", "")):
                step["run"] = step["run"].replace("sudo ", "")


def _nightly_on_merge_requests(doc: Doc) -> None:
    doc["nightly"]["rules"].append({"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'})


def _nightly_without_junit(doc: Doc) -> None:
    doc["nightly"]["artifacts"].pop("reports")


def _unit_tier_on_schedules(doc: Doc) -> None:
    for name in gitlab_jobs(doc):
        if "not vm and not netns" in script_of(gitlab_job(doc, name)):
            doc[name]["rules"] = [{"when": "on_success"}]


@pytest.mark.parametrize(
    ("load", "check", "mutate", "expected"),
    [
        (lambda: load_workflow(NIGHTLY), nightly_problems, _upload_not_always, "uploaded"),
        (lambda: load_workflow(NIGHTLY), nightly_problems, _hosted_runner, "labelled kvm"),
        (lambda: load_workflow(NIGHTLY), nightly_problems, _image_key_without_hash, "image"),
        (lambda: load_workflow(NIGHTLY), nightly_problems, _exit_code_swallowed, "exit code"),
        (lambda: load_workflow(PR), pr_problems, _no_vm_tier, "tier vm"),
        (lambda: load_workflow(PR), pr_problems, _netns_not_root, "tier netns is not run as root"),
        (load_gitlab, gitlab_problems, _nightly_on_merge_requests, "schedules only"),
        (load_gitlab, gitlab_problems, _nightly_without_junit, "junit report"),
        (load_gitlab, gitlab_problems, _unit_tier_on_schedules, "also runs on schedules"),
    ],
    ids=[
        "nightly-upload-not-always",
        "nightly-hosted-runner",
        "nightly-image-key-unhashed",
        "nightly-exit-code-swallowed",
        "pr-no-vm-tier",
        "pr-netns-not-root",
        "gitlab-nightly-on-mrs",
        "gitlab-nightly-no-junit",
        "gitlab-unit-on-schedules",
    ],
)
def test_a_mutated_copy_is_reported(
    load: Callable[[], Doc],
    check: Callable[[Doc], list[str]],
    mutate: Callable[[Doc], None],
    expected: str,
) -> None:
    """Negative control: each shape check reports the one thing taken away."""
    doc = load()
    assert check(copy.deepcopy(doc)) == []
    mutate(doc)
    problems = check(doc)
    assert any(expected in problem for problem in problems), problems

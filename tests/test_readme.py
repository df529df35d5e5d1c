"""The commands of README.md's "Install and run" section, as printed, from a fresh clone.

The commands are read out of the clone's README.md (never copied here), with the ``pip install ... &&``
set-up stripped (this test environment is that set-up). Train commands run verbatim from the clone's
root, ``--config.num_steps`` appended to keep them short; the clone has no ``workdirs/``, so they also
check that a missing workdir is created with its parents.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("readme")]

SECTION = "## Install and run"
TRAIN_STEPS = 4
SETUP = re.compile(r"^(pip install [^&;|]*?)\s*&&\s*")
# The suite runs a narrowed copy of the README's test command on this (fast, no JAX compile) selection.
SMOKE_SELECTION = "tests/test_notebooks.py::test_notebooks_found"


def readme_commands(readme: str) -> list[str]:
    """The shell commands in the fenced code blocks of the README's "Install and run" section."""
    text = open(readme).read()
    assert SECTION in text, f"{readme}: no {SECTION!r} section"
    section = text[text.index(SECTION) + len(SECTION) :]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(
        r"^[ \t]*```(?:bash|sh|shell)?[ \t]*\n(.*?)^[ \t]*```", section, re.M | re.S
    )
    commands = []
    for block in blocks:
        block = re.sub(r"\\\n", " ", block)  # continued lines
        commands += [c.strip() for c in block.splitlines() if c.strip() and c.strip()[0] != "#"]
    return commands


def split_setup(command: str) -> tuple[str, str]:
    """``(pip install part, the rest)`` of ``pip install ... && rest`` (``""`` when there is none)."""
    match = SETUP.match(command)
    return (match.group(1), command[match.end() :]) if match else ("", command)


def _env() -> dict[str, str]:
    """This environment, with this interpreter first on PATH (the README says ``python``) and no pytest
    or xdist state of the outer run (the README's test command starts its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CUR"))}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _shell(command: str, cwd, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        shell=True,
        executable="/bin/bash",
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def commands(fresh_clone) -> dict[str, list[str]]:
    """The section's commands by kind; any other command fails the test (so none goes unchecked)."""
    kinds: dict[str, list[str]] = {"train": [], "test": []}
    for command in readme_commands(os.path.join(fresh_clone, "README.md")):
        _, run = split_setup(command)
        if run.startswith("python -m experiments.train "):
            kinds["train"].append(command)
        elif run.startswith("python -m pytest "):
            kinds["test"].append(command)
        else:
            pytest.fail(f"README {SECTION!r}: no check for {command!r}; add one to {__file__}")
    assert kinds["train"] and len(kinds["test"]) == 1, kinds
    return kinds


def test_readme_train_commands_run_from_a_fresh_clone(fresh_clone, commands):
    assert not (fresh_clone / "workdirs").exists()  # fresh: the workdir's parent does not exist
    for command in commands["train"]:
        _, run = split_setup(command)
        run += f" --config.num_steps={TRAIN_STEPS}"
        out = _shell(run, fresh_clone, timeout=600)
        assert out.returncode == 0, f"{run}\nexit {out.returncode}\n{out.stderr[-3000:]}"
        workdir = re.search(r"--workdir=(\S+)", run)
        assert workdir, f"{command!r}: name the workdir, so users find its files"
        workdir = fresh_clone / workdir.group(1)
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            assert (workdir / name).is_file(), (run, name, sorted(os.listdir(workdir)))
        assert os.listdir(workdir / "checkpoints"), run
        assert json.load(open(workdir / "summary.json"))["step"] == TRAIN_STEPS


def test_readme_test_command_is_what_ci_runs(fresh_clone, commands):
    """The README's test command is the one ``.ci/run`` runs; a narrowed copy of it runs here.

    Executing it as printed would run the whole suite from inside the suite (recursion, and every test
    twice). Instead: its test part must be exactly the one in ``.ci/run`` (which CI executes, so the full
    command is exercised there), its set-up part the same install; and the command runs from the clone's
    root with only its final ``tests`` argument narrowed to one quick test, which checks that its
    options (``-n 2 --dist loadgroup``) and the clone's conftest work.
    """
    (command,) = commands["test"]
    ci_lines = [
        line.strip()
        for line in open(fresh_clone / ".ci" / "run")
        if "python -m pytest" in line and not line.lstrip().startswith("#")
    ]
    assert len(ci_lines) == 1, ci_lines
    setup, run = split_setup(command)
    ci_setup, ci_run = split_setup(ci_lines[0])
    assert run == ci_run, (command, ci_lines[0])
    quiet = lambda s: [a for a in shlex.split(s) if a != "-q"]  # noqa: E731
    assert quiet(setup) == quiet(ci_setup), (setup, ci_setup)

    args = shlex.split(run)
    assert args[-1] == "tests", run
    narrowed = shlex.join([*args[:-1], SMOKE_SELECTION])
    out = _shell(narrowed, fresh_clone, timeout=300)
    assert out.returncode == 0, f"{narrowed}\nexit {out.returncode}\n{out.stdout[-3000:]}"
    assert "1 passed" in out.stdout, out.stdout[-3000:]

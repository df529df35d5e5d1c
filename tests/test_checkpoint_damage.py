"""A damaged checkpoint is one warning line and a resume from the newest readable one, never a crash.

One short run (6 steps, checkpoints at 4 and 6: ``keep_checkpoints=2``) is trained once; each case damages a
copy of its workdir the way disks, copies and people do, re-runs the same command in a fresh process and
checks the exit status, every line on stderr, that the damaged step directory was moved aside intact, and
that the final parameters equal the undamaged run's bit for bit.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from _subprocess import ROOT, device_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("checkpoint_damage")]

TRAIN = [sys.executable, "-m", "experiments.train"]
ARGS = [
    "--config=configs/rigl_resnet.py",
    "--config.model.name=lenet",
    "--config.data.name=digits",
    "--config.data.max_eval_examples=64",
    "--config.batch_size=32",
    "--config.num_steps=6",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.checkpoint_every=2",
    "--config.sparsity.update_every=3",
]
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl's own log format (orbax, jax)
WARNING = re.compile(
    r"^warning: checkpoint step 6 is unreadable \((?P<reason>.+)\); "
    r"moved it to (?P<target>\S+), resuming from step 4$"
)
TIMING_KEYS = {"step_time_s", "first_step_s"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One host device and a persistent compilation cache shared by every run here."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return device_env(
        1, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """The workdir of the finished, undamaged 6-step run (never modified: cases copy it)."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    out = _train(workdir, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _steps(workdir) == [4, 6]
    return workdir


def _train(workdir, env):
    return subprocess.run(
        TRAIN + ARGS + [f"--workdir={workdir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _stderr_lines(out):
    """Non-empty stderr lines, without absl-formatted log lines; fails if there are more than 3 in all."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, out.stderr[-3000:]
    return [line for line in lines if not ABSL_LINE.match(line)]


def _files(path):
    """Relative path -> sha256 of every file under ``path``."""
    result = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                result[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return result


def _array_file(step_dir):
    """The largest array data file of the step's train state (OCDBT data under ``state/``)."""
    files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)]
    return max((p for p in files if os.path.isfile(p)), key=os.path.getsize)


def flip_bytes(step_dir):
    path = _array_file(step_dir)
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 4, len(data), 7):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
    return os.path.relpath(path, step_dir)


def truncate(step_dir):
    path = _array_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 2)
    return os.path.relpath(path, step_dir)


def remove_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))  # the state's pytree metadata
    return None


def remove_commit_marker(step_dir):
    os.remove(os.path.join(step_dir, "commit_success.txt"))  # orbax's mark of a finished save
    return None


def _state(workdir, step):
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"), item_names=("state", "data")
    )
    args = ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
    restored = manager.restore(step, args=args)
    manager.close()
    return restored["state"], restored["data"]


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}/{key}").items()
        }
    if isinstance(tree, (list, tuple)):
        return {
            k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}/{i}").items()
        }
    return {prefix: np.asarray(tree)}


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


@pytest.mark.parametrize("damage", [flip_bytes, truncate, remove_metadata, remove_commit_marker])
def test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes(
    damage, trained, env, tmp_path
):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    step_dir = os.path.join(workdir, "checkpoints", "6")
    damage(step_dir)
    damaged_files = _files(step_dir)

    out = _train(workdir, env)

    assert out.returncode == 0, out.stderr[-3000:]
    lines = _stderr_lines(out)
    assert len(lines) == 1, out.stderr
    match = WARNING.match(lines[0])
    assert match, lines[0]
    if damage is remove_commit_marker:
        assert match["reason"] == "incomplete: no commit_success.txt"
    else:
        assert re.match(r"^\w+: \S", match["reason"]), match["reason"]  # "Type: message"
    # Moved aside, whole, where orbax does not see a step; the resumed run saved a new step 6.
    moved = os.path.join(workdir, "checkpoints", "damaged", "6")
    assert os.path.samefile(match["target"], moved)
    assert _files(moved) == damaged_files
    assert _steps(workdir) == [4, 6]
    # Resumed from step 4: the same final state, bit for bit, and the same metrics rows.
    state_a, data_a = _state(trained, 6)
    state_b, data_b = _state(workdir, 6)
    assert data_a == data_b
    flat_a, flat_b = _flatten(state_a), _flatten(state_b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)
    assert _rows(workdir) == _rows(trained)


def test_no_readable_checkpoint_is_one_error_line_and_touches_nothing(trained, env, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    flip_bytes(os.path.join(workdir, "checkpoints", "6"))
    remove_commit_marker(os.path.join(workdir, "checkpoints", "4"))
    flip_bytes(os.path.join(workdir, "checkpoints", "4"))
    before = _files(workdir)

    out = _train(workdir, env)

    assert out.returncode == 2, out.stderr[-3000:]
    lines = _stderr_lines(out)
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: no readable checkpoint in "), lines[0]
    assert "step 6: " in lines[0] and "step 4: " in lines[0] and "nothing was moved" in lines[0]
    assert out.stdout == ""
    assert _files(workdir) == before  # nothing moved, written or deleted


def test_unexpected_error_is_one_line_with_the_traceback_in_a_file(tmp_path, capsys):
    from experiments import cli

    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError as e:
        error = e
    path = str(tmp_path / "traceback.txt")
    with pytest.raises(SystemExit) as exit_info:
        cli.crash(error, path)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: RuntimeError: boom (traceback in {path})\n"
    text = open(path).read()
    assert text.startswith("Traceback (most recent call last):") and "second line" in text


def test_ctrl_c_during_a_save_is_raised_once_the_save_is_done():
    import signal
    import threading

    from experiments import checkpointing

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set from the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with checkpointing._ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                finished = True
        assert finished and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)

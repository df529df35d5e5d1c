"""End to end: the README command, workdir files, kill/resume bit-identity, SIGTERM, every config."""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-m", "experiments.train"]
# A small, fast RigL run: LeNet on the 8x8 digits, every feature on (logs, evals, mask updates, saves).
SMALL = [
    "--config=configs/rigl_resnet.py",
    "--config.model.name=lenet",
    "--config.data.name=digits",
    "--config.batch_size=32",
    "--config.num_steps=40",
    "--config.log_every=1",
    "--config.eval_every=10",
    "--config.checkpoint_every=2",
    "--config.sparsity.update_every=3",
]
TIMING_KEYS = {"step_time_s", "first_step_s"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment sharing a persistent compilation cache, so reruns skip compiling."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _run(args, env, timeout=300):
    out = subprocess.run(
        TRAIN + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_state(workdir):
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"), item_names=("state", "data")
    )
    step = manager.latest_step()
    args = ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
    restored = manager.restore(step, args=args)
    manager.close()
    return step, restored["state"], restored["data"]


def _wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, "run ended before it could be interrupted"
        assert time.time() - start < timeout
        time.sleep(0.05)


def _checkpoint_steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.mark.slow
def test_readme_command_writes_every_workdir_file(tmp_path, env):
    workdir = str(tmp_path / "run")
    args = [
        "--config=configs/rigl_resnet.py",
        f"--workdir={workdir}",
        "--config.num_steps=4",  # mask updates at t = 0 and 2 (RigL stops at 75%: t < 3)
        "--config.sparsity.update_every=2",
        "--config.log_every=1",
        "--config.eval_every=2",
        "--config.checkpoint_every=2",
        "--config.data.max_eval_examples=64",
    ]
    _run(args, env)
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["num_steps"] == 4 and config["sparsity"]["algorithm"] == "rigl"
    rows = _rows(workdir)
    for row in rows:
        assert {"step", "split", "loss", "accuracy", "sparsity", "lr", "step_time_s"} <= set(row)
    updates = [r for r in rows if "sad" in r]
    assert [r["step"] for r in updates] == [1, 3]  # rows count completed steps
    assert all({"itop", "dropped", "grown"} <= set(r) for r in updates)
    assert {(r["step"], r["split"]) for r in rows if r["split"] == "eval"} == {
        (2, "eval"),
        (4, "eval"),
    }
    assert abs(rows[-1]["sparsity"] - 0.8) < 0.01
    masks = sorted(os.listdir(os.path.join(workdir, "masks")))
    assert masks == ["step_0000000.npz", "step_0000001.npz", "step_0000003.npz", "step_0000004.npz"]
    import sparsejax as sj

    snapshot = sj.load_masks(os.path.join(workdir, "masks", masks[-1]))
    assert snapshot["step"] == 4 and snapshot["masks"]
    assert _checkpoint_steps(workdir) == [2, 4]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["step"] == 4 and 0 <= summary["eval_accuracy"] <= 1
    # Re-running the same command resumes: the run is finished, so nothing changes.
    _run(args, env)
    assert _rows(workdir) == rows


@pytest.mark.slow
def test_killed_and_preempted_run_resumes_bit_identically(tmp_path, env):
    reference = str(tmp_path / "reference")
    _run(SMALL + [f"--workdir={reference}"], env)

    workdir = str(tmp_path / "interrupted")
    cmd = TRAIN + SMALL + [f"--workdir={workdir}"]
    # 1. SIGKILL mid-training.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _wait_for(lambda: any(s >= 10 for s in _checkpoint_steps(workdir)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_steps(workdir)[-1]
    assert killed_at < 40 and not os.path.exists(os.path.join(workdir, "summary.json"))
    # A save cut short by the kill leaves only orbax's temporary directory: it must be ignored.
    partial = os.path.join(workdir, "checkpoints", f"{killed_at + 2}.orbax-checkpoint-tmp-0")
    os.makedirs(os.path.join(partial, "state"))
    # 2. SIGTERM (preemption) after a few more steps: saves a checkpoint, exits 143.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _wait_for(lambda: _rows(workdir)[-1]["step"] >= killed_at + 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read()
    preempted_at = _checkpoint_steps(workdir)[-1]
    assert killed_at < preempted_at < 40
    # 3. Finish.
    _run(SMALL + [f"--workdir={workdir}"], env)

    step_a, state_a, data_a = _final_state(reference)
    step_b, state_b, data_b = _final_state(workdir)
    assert step_a == step_b == 40 and data_a == data_b
    flat_a, flat_b = _flatten(state_a), _flatten(state_b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)
    # Metrics: no duplicated rows after the resumes, and the same values as the uninterrupted run.
    rows_a, rows_b = _rows(reference), _rows(workdir)
    assert [(r["step"], r["split"]) for r in rows_b] == [(r["step"], r["split"]) for r in rows_a]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}  # noqa: E731
    assert [strip(r) for r in rows_b] == [strip(r) for r in rows_a]


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


CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not p.endswith(("__init__.py", "base.py"))
)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_runs_a_few_steps(name, tmp_path):
    """Each config's default preset for 3 steps on embedded data, with a tiny model.

    Image configs run on the 8x8 digits, their ResNets replaced by a one-hidden-layer MLP (compile time
    grows with the number of sparsified leaves; the ResNet path is covered by the README-command test);
    the ViT of `pgf` and the language models keep their own small model and embedded data.
    """
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.max_eval_examples = 64
    config.batch_size = 16
    config.num_steps = 3
    config.log_every = 1
    config.eval_every = 0
    config.checkpoint_every = 0
    config.sparsity.update_every = 1
    if config.model.name == "transformer_lm":
        config.model.depth, config.model.hidden_dim, config.model.mlp_dim = 1, 32, 64
    else:
        config.data.name = "digits"
    if config.model.name not in ("vit_tiny", "transformer_lm"):
        # 64 -> 32 -> 10: M = 4 and 8 divide both contraction axes.
        config.model.name, config.model.hidden = "mlp", (32,)
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 3 and np.isfinite(result["train_loss"])
    rows = _rows(str(tmp_path))
    assert rows[-1]["split"] == "eval" and 0 <= rows[-1]["sparsity"] < 1
    if config.sparsity.algorithm in ("ste", "sr_ste", "pgf"):  # masks move every step: every row
        train_rows = [r for r in rows if r["split"] == "train"]
        assert [r["step"] for r in train_rows] == [1, 2, 3]
        for r in train_rows:
            assert r["sad"] == r["dropped"] + r["grown"] and 0 < r["itop"] <= 1

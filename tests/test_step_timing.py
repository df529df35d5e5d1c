"""``step_time_s`` measures compute, not how fast JAX's async dispatch queued the steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("step_timing")]

# An MLP wide enough that a step's compute (~9 GFLOP) dwarfs its dispatch; no evals or saves mid-run.
STEPS, LOG_EVERY = 40, 10
ARGS = [
    "--config=configs/dense.py",
    "--config.model.name=mlp",
    "--config.model.hidden=(2048, 2048)",
    "--config.batch_size=256",
    "--config.data.augment=none",
    "--config.data.max_eval_examples=256",
    f"--config.num_steps={STEPS}",
    f"--config.log_every={LOG_EVERY}",
    "--config.eval_every=0",
    "--config.checkpoint_every=0",
]


def test_logged_step_times_add_up_to_the_wall_time(tmp_path):
    workdir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    summary = json.load(open(workdir / "summary.json"))
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    # Each row's step_time_s is the mean over its window's steps, the first step of the run (mostly
    # compilation, reported as first_step_s) left out.
    logged, previous = 0.0, 0
    for r in train_rows:
        timed = r["step"] - previous - ("first_step_s" in r)
        logged += r["step_time_s"] * timed
        previous = r["step"]
    evals = sum(r["step_time_s"] for r in rows if r["split"] == "eval")  # the final eval only
    # What remains of the wall time is the train steps plus a little logging and the final save.
    wall = summary["runtime_s"] - summary["first_step_s"] - evals
    ratio = logged / wall
    print(f"logged {logged:.3f}s, wall {wall:.3f}s, ratio {ratio:.3f}")
    assert 0.7 <= ratio <= 1.3, (ratio, logged, wall, train_rows)

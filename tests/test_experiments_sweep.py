"""Sweeps: a two-point sweep runs locally, skips finished points, summarises; W&B export."""

import csv
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config=configs/rigl_resnet.py",
    "--config.model.name=mlp",
    "--config.model.hidden=(32,)",
    "--config.data.name=digits",
    "--config.batch_size=16",
    "--config.num_steps=3",
    "--config.eval_every=0",
    "--config.checkpoint_every=0",
]


def _sweep(*args, env=None):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": env} if env else None
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *TINY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
def test_two_point_sweep_runs_skips_finished_points_and_summarises(tmp_path):
    sweep_dir = tmp_path / "sweep"
    cache = str(tmp_path / "cache")
    out = _sweep(f"--workdir={sweep_dir}", "--parallel=2", env=cache)
    assert out.returncode == 0, out.stderr[-2000:]
    names = ["sparsity=0.8", "sparsity=0.9"]
    for name in names:
        assert (sweep_dir / name / "summary.json").exists()
        assert (sweep_dir / name / "metrics.jsonl").exists()
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [r["point"] for r in rows] == names
    assert all(r["status"] == "finished" and r["step"] == "3" for r in rows)
    # ERK realises the target to within one weight per leaf.
    assert [round(float(r["sparsity"]), 2) for r in rows] == [0.8, 0.9]
    assert "| point |" in (sweep_dir / "summary.md").read_text()

    again = _sweep(f"--workdir={sweep_dir}", env=cache)
    assert again.returncode == 0 and again.stdout.count("skipped (finished)") == 2

    one = _sweep(f"--workdir={sweep_dir}", "--point=sparsity=0.9", env=cache)
    assert one.returncode == 0 and "sparsity=0.9: skipped (finished)" in one.stdout


def test_wandb_export_lists_the_same_points(tmp_path):
    sweep_dir = tmp_path / "new" / "sweep"  # missing parents are created
    out = _sweep(f"--workdir={sweep_dir}", "--export=wandb")
    assert out.returncode == 0, out.stderr
    spec = yaml.safe_load(open(sweep_dir / "wandb_sweep.yaml"))
    assert spec["program"] == "experiments/train.py" and spec["method"] == "grid"
    assert spec["parameters"]["point"]["values"] == ["sparsity=0.8", "sparsity=0.9"]
    command = spec["command"]
    assert command[2:4] == ["-m", "experiments.sweep"] and command[-1] == "${args}"
    assert "--config.num_steps=3" in command and "--config.wandb.mode=online" in command


def test_config_without_sweep_is_one_clear_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--config=configs/dense.py",
            f"--workdir={tmp_path / 'new' / 'sweep'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --config=configs/dense.py: configs/dense.py defines no get_sweep(arg=None)"
    ]
    assert not (tmp_path / "new").exists()  # a rejected sweep creates no directory


def test_workdir_under_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    out = _sweep(f"--workdir={tmp_path / 'file' / 'sweep'}", "--export=wandb")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--workdir=" in out.stderr and "is not a directory; allowed:" in out.stderr

"""Lottery tickets end to end (``python -m experiments.lottery``): rewind point, exact sparsity per round,
nested masks pruned by magnitude, resume after a kill, lottery.json, and the run learns."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

import sparsejax as sj
from experiments import lottery, tickets

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lottery")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "experiments.lottery"]
STEPS, ROUNDS, FRACTION, REWIND = 16, 3, 0.3, 4
# An MLP 64-32-10 on the 8x8 digits: 2,368 prunable weights, 16 steps of 32 per round.
ARGS = [
    "--config=configs/lottery.py",
    "--config.data.name=digits",
    "--config.model.hidden=(32,)",
    "--config.batch_size=32",
    f"--config.num_steps={STEPS}",
    "--config.optimizer.learning_rate=0.01",
    f"--config.lottery.rounds={ROUNDS}",
    f"--config.lottery.prune_fraction={FRACTION}",
    f"--config.lottery.rewind_step={REWIND}",
    "--config.checkpoint_every=4",
    "--config.keep_checkpoints=10",  # every checkpoint stays: step REWIND of round 0 included
    "--config.log_every=4",
]
KERNELS = ("dense_0/kernel", "head/kernel")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment sharing a persistent compilation cache, so reruns skip compiling."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _run(workdir, env, *extra, status=0):
    out = subprocess.run(
        [*CLI, *ARGS, f"--workdir={workdir}", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == status, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """One uninterrupted lottery run: (workdir, its stdout)."""
    workdir = str(tmp_path_factory.mktemp("lottery") / "ref")
    return workdir, _run(workdir, env).stdout


def _summary(workdir):
    with open(os.path.join(workdir, "lottery.json")) as f:
        return json.load(f)


def _params(workdir, r, step=STEPS):
    return tickets.flatten(tickets.final_state(lottery.round_dir(workdir, r), step)["params"])


def _ticket(workdir, r):
    return sj.load_masks(os.path.join(lottery.round_dir(workdir, r), lottery.TICKET))["masks"]


def _without_timing(summary):
    rows = [{k: v for k, v in row.items() if k != "runtime_s"} for row in summary["rounds"]]
    return {**summary, "rounds": rows}


def test_lottery_json_table_and_learning(reference):
    workdir, stdout = reference
    summary = _summary(workdir)
    total = 64 * 32 + 32 * 10
    assert summary["prune_fraction"] == FRACTION and summary["rewind_step"] == REWIND
    rows = summary["rounds"]
    assert [row["round"] for row in rows] == list(range(ROUNDS))
    for r, row in enumerate(rows):
        keep = round(total * (1 - FRACTION) ** r)
        assert row["prunable"] == total and row["active"] == keep and row["steps"] == STEPS
        assert row["sparsity"] == 1 - keep / total
        assert abs(row["sparsity"] - (1 - (1 - FRACTION) ** r)) <= 0.5 / total
        assert abs(row["network_sparsity"] - row["sparsity"]) < 1e-9  # train.py's count agrees
        with open(os.path.join(lottery.round_dir(workdir, r), "summary.json")) as f:
            run = json.load(f)
        assert row["eval_accuracy"] == run["eval_accuracy"] and row["eval_loss"] == run["eval_loss"]
    # The run learns: every round far above chance (10%), the tickets at least as good as the start.
    assert all(row["eval_accuracy"] > 0.6 for row in rows)
    assert rows[-1]["eval_accuracy"] >= rows[0]["eval_accuracy"] - 0.05
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["round", "sparsity", "eval_acc", "eval_loss", "steps"]
    assert [line.split()[0] for line in lines[1:]] == [str(r) for r in range(ROUNDS)]
    assert float(lines[2].split()[1]) == pytest.approx(rows[1]["sparsity"], abs=1e-4)


def test_masks_nested_pruned_by_magnitude_and_fixed(reference):
    workdir, _ = reference
    before = None
    for r in range(1, ROUNDS):
        masks = _ticket(workdir, r)
        assert sorted(masks) == ["dense_0/kernel", "head/kernel"]  # ndim >= 2, output layer too
        weights = _params(workdir, r - 1)  # the previous round's final weights
        if before is None:
            before = {n: np.ones_like(m) for n, m in masks.items()}
        assert all(not (masks[n] & ~before[n]).any() for n in masks)  # nested
        pruned = np.concatenate([np.abs(weights[n])[before[n] & ~masks[n]] for n in masks])
        kept = np.concatenate([np.abs(weights[n])[masks[n]] for n in masks])
        assert pruned.size == sum(int(before[n].sum() - masks[n].sum()) for n in masks) > 0
        assert pruned.max() <= kept.min()  # the smallest |w| among the previous actives went
        # Training kept the mask fixed: train.py's last snapshot is the ticket, weights 0 outside.
        snapshot = sj.load_masks(
            os.path.join(lottery.round_dir(workdir, r), "masks", f"step_{STEPS:07d}.npz")
        )
        final = _params(workdir, r)
        for n in masks:
            np.testing.assert_array_equal(snapshot["masks"][n], masks[n])
            assert not final[n][~masks[n]].any()
        before = masks


def test_rewind_point_and_rounds_start_from_it(reference, tmp_path):
    workdir, _ = reference
    rewind = tickets.load_arrays(os.path.join(workdir, lottery.REWIND))
    # The rewind point is round 0's params after REWIND updates, bit for bit.
    at_k = _params(workdir, 0, REWIND)
    assert sorted(rewind) == sorted(at_k)
    for n in rewind:
        np.testing.assert_array_equal(rewind[n], at_k[n], err_msg=n)
    assert not any(np.array_equal(rewind[n], _params(workdir, 0)[n]) for n in KERNELS)
    # Round r's initial state is rewind * mask: the round's own run with 0 steps saves exactly it.
    for r in range(1, ROUNDS):
        masks = _ticket(workdir, r)
        with open(os.path.join(lottery.round_dir(workdir, r), "config.json")) as f:
            round_config = ml_collections.ConfigDict(json.load(f))  # as the CLI ran it
        round_config.num_steps = 0
        start = tmp_path / f"start_{r}"
        lottery.run_round(round_config, str(start), tickets.rewound(rewind, masks))
        initial = tickets.flatten(tickets.final_state(str(start), 0)["params"])
        for n in rewind:
            expected = np.where(masks[n], rewind[n], 0) if n in masks else rewind[n]
            assert initial[n].dtype == expected.dtype
            np.testing.assert_array_equal(initial[n], expected, err_msg=f"round {r}: {n}")


def test_killed_run_resumes_and_finished_rounds_are_skipped(reference, tmp_path, env):
    workdir, stdout = reference
    expected = _without_timing(_summary(workdir))
    # 1. What a kill in round 1 leaves: round 0 done, round 1 part-way (checkpoints 4 and 8, no
    #    summary), round 2 and lottery.json absent; rewind.npz too, so it is read again from round 0.
    cut = str(tmp_path / "cut")
    shutil.copytree(workdir, cut)
    for name in ("round_2", "lottery.json", "rewind.npz", "round_1/summary.json"):
        path = os.path.join(cut, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for step in (12, 16):
        shutil.rmtree(os.path.join(cut, "round_1", "checkpoints", str(step)))
    round0 = os.path.join(cut, "round_0", "metrics.jsonl")
    mtime = os.stat(round0).st_mtime_ns
    assert _run(cut, env).stdout == stdout
    assert os.stat(round0).st_mtime_ns == mtime  # the finished round was skipped, not re-run
    assert _without_timing(_summary(cut)) == expected
    for r in range(ROUNDS):
        a, b = _params(workdir, r), _params(cut, r)
        for n in a:
            np.testing.assert_array_equal(a[n], b[n], err_msg=f"round {r}: {n}")
    # 2. A real SIGKILL once round 1 has a checkpoint, then the same command again.
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        [*CLI, *ARGS, f"--workdir={killed}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = os.path.join(killed, "round_1", "checkpoints")
    deadline = time.time() + 300
    while not (os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints))):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _run(killed, env).stdout == stdout
    assert _without_timing(_summary(killed)) == expected
    a, b = _params(workdir, ROUNDS - 1), _params(killed, ROUNDS - 1)
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)
    # 3. Re-running a finished lottery changes nothing and prints the same table.
    assert _run(workdir, env).stdout == stdout
    assert _without_timing(_summary(workdir)) == expected


def test_bad_lottery_settings_fail_in_one_line(tmp_path, env):
    out = _run(str(tmp_path / "bad"), env, "--config.lottery.prune_fraction=1.5", status=2)
    assert out.stderr.strip().splitlines() == [
        "error: config.lottery.prune_fraction=1.5: allowed values in (0, 1)"
    ]
    assert not os.path.exists(tmp_path / "bad")

"""metrics.jsonl resume truncation, network sparsity, and W&B offline logging inside the workdir."""

import json
import os

import jax.numpy as jnp
import numpy as np
import optax

import sparsejax as sj
from configs import base
from experiments import metrics_log


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_truncates_rows_past_the_restored_step_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "split": "train", "loss": 1.0} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "spl')
    log = metrics_log.MetricsLog(str(tmp_path), base.get_base_config(), start_step=3)
    assert log.has(3, "train") and not log.has(4, "train")
    log.write({"step": 4, "split": "train", "loss": np.float32(0.5), "sad": jnp.int32(7)})
    log.close()
    assert [r["step"] for r in _rows(path)] == [1, 2, 3, 4]
    assert _rows(path)[-1] == {"step": 4, "split": "train", "loss": 0.5, "sad": 7}


def test_network_sparsity_counts_dense_kept_leaves_as_dense():
    params = {"a": jnp.ones((10, 10)), "b": jnp.ones((10, 10)), "bias": jnp.ones(10)}
    algo = sj.static(sparsity=0.5, distribution="uniform", overrides={"^b": 0.0})
    state = sj.sparsify(optax.sgd(0.1), algo).init(params)
    total, per_leaf = metrics_log.network_sparsity(params, sj.masks_of(state))
    assert total == 0.25  # 50 zeros of the 200 kernel weights; the bias is not a kernel
    assert per_leaf == {"a": 0.5}


def test_wandb_offline_logs_into_the_workdir_and_keeps_the_run_id(tmp_path):
    config = base.get_base_config()
    config.wandb.mode = "offline"
    log = metrics_log.MetricsLog(str(tmp_path), config, start_step=0)
    log.write({"step": 1, "split": "train", "loss": 1.0, "sparsity": 0.5}, {"conv/kernel": 0.5})
    log.write({"step": 1, "split": "eval", "loss": 1.2, "accuracy": 0.3})
    log.close()
    run_id = (tmp_path / "wandb_run_id").read_text()
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].endswith(run_id)
    assert len(_rows(tmp_path / "metrics.jsonl")) == 2

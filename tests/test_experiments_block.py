"""configs/block_rigl_{mlp,vit}.py end to end: block-sparse models trained by block RigL through
experiments.train, masked-dense and compressed.

The runs go through ``train.train_and_evaluate`` (what the CLI calls after validation) on the real
mnist5k digits, with the XLA block-sparse path forced so the sparse kernels, not the dense fallback that
``impl=auto`` picks for tiny CPU shapes, compute every step.
"""

import glob
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import sparsejax as sj
from configs import block_rigl_mlp, block_rigl_vit
from experiments import train, validate
from experiments.errors import ConfigError

BLOCK = 16
HIDDEN = (128, 128)
STEPS = 150
# in -> out widths of the block-sparse layers on 784-pixel digits
LAYERS = {"block_0/kernel": (784, HIDDEN[0]), "block_1/kernel": (HIDDEN[0], HIDDEN[1])}


def _small_config():
    config = block_rigl_mlp.get_config()
    config.model.hidden = HIDDEN
    config.model.impl = "xla"
    config.num_steps = STEPS
    config.sparsity.update_every = 25  # RigL updates at t = 0, 25, ..., 100 (end_step: 75%)
    config.log_every = 50
    config.eval_every = 0
    config.checkpoint_every = 0
    return config


def _blocks(mask):
    """(KB, NB) active blocks of an element mask, asserting it is made of whole blocks."""
    k, n = mask.shape
    tiles = mask.reshape(k // BLOCK, BLOCK, n // BLOCK, BLOCK)
    active = tiles.any(axis=(1, 3))
    assert (active == tiles.all(axis=(1, 3))).all(), "mask is not made of whole blocks"
    return active


@pytest.mark.slow
@pytest.mark.xdist_group("experiments_block")
def test_block_rigl_mlp_trains_through_experiments(tmp_path):
    config = _small_config()
    config.model.compressed = False  # the masked-dense form (compressed: further below)
    validate.check(config, str(tmp_path))
    result = train.train_and_evaluate(config, str(tmp_path))
    print(f"block RigL MLP: held-out accuracy {result['eval_accuracy']:.4f}")
    assert result["step"] == STEPS
    assert result["eval_accuracy"] > 0.8, result  # chance is 0.1; ~0.9 reached in 150 steps

    snapshots = sorted(glob.glob(os.path.join(tmp_path, "masks", "*.npz")))
    loaded = [sj.load_masks(p) for p in snapshots]
    assert [s["step"] for s in loaded] == [0, 1, 26, 51, 76, 101, STEPS]
    for snapshot in loaded:
        assert set(snapshot["masks"]) == set(LAYERS)  # the dense head carries no mask
        for name, (k, n) in LAYERS.items():
            blocks = _blocks(snapshot["masks"][name])
            target = round((1 - config.sparsity.sparsity) * (k // BLOCK) * (n // BLOCK))
            assert blocks.sum() == target, (snapshot["step"], name, blocks.sum(), target)
    # The topology moved at RigL's updates, in every layer (block_1 has only 6 of 64 blocks active,
    # so one block moves per update and may move back later: compare every update with the one before).
    for name in LAYERS:
        history = [_blocks(s["masks"][name]) for s in loaded[:-1]]
        assert any((a != b).any() for a, b in zip(history, history[1:])), name
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        updates = [r for r in map(json.loads, f) if "grown" in r]
    assert len(updates) == 5 and sum(r["grown"] for r in updates) > 0


def test_density_that_disagrees_with_sparsity_is_one_line_before_compiling():
    config = block_rigl_mlp.get_config()
    config.model.density = 0.2
    with pytest.raises(ConfigError) as e:
        validate.check(config)
    message = str(e.value)
    assert "config.model.density=0.2 disagrees with sparsity.sparsity=0.9" in message
    assert "allowed: config.model.density = 1 - sparsity.sparsity = 0.1" in message
    assert "\n" not in message
    # The field reference keeps the two in step when only the sparsity changes.
    config = block_rigl_mlp.get_config()
    config.sparsity.sparsity = 0.75
    assert config.model.density == pytest.approx(0.25)
    validate.check(config)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("sparsity.block_size", None, "sparsity.block_size=None: must match"),
        ("sparsity.distribution", "erk", "allowed: uniform"),
        ("sparsity.algorithm", "gmp", "allowed: static, set, rigl"),
        ("model.hidden", (100,), "allowed widths that are multiples of config.model.block_size=16"),
    ],
)
def test_other_disagreements_are_one_line(key, value, expected):
    config = block_rigl_mlp.get_config()
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(ConfigError, match=expected) as e:
        validate.check(config)
    assert "\n" not in str(e.value)


def test_masks_that_disagree_with_the_layers_stop_the_run(tmp_path):
    """What validation cannot see (an override here) is caught exactly on the initial masks."""
    config = _small_config()
    config.sparsity.overrides = {"block_1": 0.5}
    validate.check(config)
    config.model.compressed = False
    with pytest.raises(
        ConfigError, match="layer block_1 computes 6 of 64 blocks but its mask keeps 32"
    ):
        train.train_and_evaluate(config, str(tmp_path))
    config.model.compressed = True
    with pytest.raises(
        ConfigError,
        match=r"^sparsity.sparsity=0.5 keeps 32 of the 64 blocks of leaf block_1/kernel",
    ):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))


def _final_state(workdir):
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"), item_names=("state", "data")
    )
    args = ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
    restored = manager.restore(manager.latest_step(), args=args)
    manager.close()
    return jax.tree_util.tree_flatten_with_path(restored["state"])[0], restored["data"]


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [
            {k: v for k, v in json.loads(line).items() if k not in ("step_time_s", "first_step_s")}
            for line in f
        ]


@pytest.mark.slow
@pytest.mark.xdist_group("experiments_block")
def test_compressed_block_rigl_mlp_trains_and_resumes_bit_exactly(tmp_path):
    """Compressed layers through experiments.train: masked-dense-equivalent snapshots and metrics,
    and a run resumed from a checkpoint (topology included) ends bit-identical to an uninterrupted one."""
    config = _small_config()
    config.model.compressed = True
    config.num_steps = 60
    config.sparsity.update_every = 10  # updates at t = 0, 10, ..., 40 (end_step: 75%)
    config.checkpoint_every = 20
    config.keep_checkpoints = 3
    config.log_every = 10  # train rows average whole windows on both sides of the resume at 40
    validate.check(config, str(tmp_path))
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    result = train.train_and_evaluate(config, full)
    assert result["step"] == 60 and result["eval_accuracy"] > 0.7, result
    snapshots = sorted(glob.glob(os.path.join(full, "masks", "*.npz")))
    loaded = [sj.load_masks(p) for p in snapshots]
    assert [s["step"] for s in loaded] == [0, 1, 11, 21, 31, 41, 60]
    for snapshot in loaded:  # the masks of the masked-dense equivalent network
        assert set(snapshot["masks"]) == set(LAYERS)
        for name, (k, n) in LAYERS.items():
            target = round(0.1 * (k // BLOCK) * (n // BLOCK))
            assert _blocks(snapshot["masks"][name]).sum() == target
    updates = [r for r in _rows(full) if "grown" in r]
    assert len(updates) == 5 and sum(r["grown"] for r in updates) > 0
    assert all(r["sad"] <= r["dropped"] + r["grown"] and 0 < r["itop"] <= 1 for r in updates)

    # Resume: the same run with its last checkpoint (step 60) and summary gone resumes from step 40.
    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "60"))
    os.remove(os.path.join(resumed, "summary.json"))
    assert train.train_and_evaluate(config, resumed)["step"] == 60
    (flat_a, data_a), (flat_b, data_b) = _final_state(full), _final_state(resumed)
    assert data_a == data_b and [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    assert _rows(resumed) == _rows(full)


@pytest.mark.xdist_group("experiments_block")
def test_block_rigl_vit_trains_compressed_and_checks_its_layers(tmp_path):
    config = block_rigl_vit.get_config()
    config.num_steps, config.batch_size = 6, 32
    config.sparsity.update_every = 2
    config.log_every, config.eval_every, config.checkpoint_every = 2, 0, 0
    config.data.max_eval_examples = 64
    validate.check(config, str(tmp_path))
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 6 and np.isfinite(result["train_loss"])
    masks = sj.load_masks(sorted(glob.glob(os.path.join(tmp_path, "masks", "*.npz")))[-1])["masks"]
    names = {f"block{i}_mlp/{fc}/kernel" for i in range(2) for fc in ("fc1", "fc2")}
    assert set(masks) == names  # attention, embedding and head stay dense
    for name in names:  # 64 x 256 or 256 x 64: 64 blocks of 16 x 16, 10% kept
        assert _blocks(masks[name]).sum() == round(0.1 * 64)
    # Widths that the blocks do not tile are one line, before anything compiles.
    config.model.mlp_dim = 100
    with pytest.raises(ConfigError, match="config.model.mlp_dim=100: allowed positive multiples"):
        validate.check(config)


@pytest.mark.xdist_group("experiments_block")
def test_compressed_block_rigl_on_eigen_dots_follows_the_default_and_resumes_bit_exactly(tmp_path):
    """``--config.xla_cpu_dots=eigen`` (kernels_pallas.xla_cpu): the same run to float tolerance as with
    XLA's default dot library, and a resumed run ends bit-identical to an uninterrupted one."""
    config = _small_config()
    config.model.compressed = True
    config.num_steps, config.sparsity.update_every = 30, 10
    config.log_every, config.checkpoint_every, config.keep_checkpoints = 10, 10, 3
    default, full, resumed = (str(tmp_path / name) for name in ("default", "full", "resumed"))
    train.train_and_evaluate(config, default)
    config.xla_cpu_dots = "eigen"
    validate.check(config, full)
    assert train.train_and_evaluate(config, full)["step"] == 30
    rows, rows_default = _rows(full), _rows(default)
    assert [r["step"] for r in rows] == [r["step"] for r in rows_default]
    for a, b in zip(rows, rows_default):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3, err_msg=str(a))
        assert a.get("grown") == b.get("grown")

    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "30"))
    os.remove(os.path.join(resumed, "summary.json"))
    assert train.train_and_evaluate(config, resumed)["step"] == 30
    (flat_a, _), (flat_b, _) = _final_state(full), _final_state(resumed)
    for (path, a), (_, b) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    assert _rows(resumed) == rows

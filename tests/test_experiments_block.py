"""configs/block_rigl_mlp.py end to end: a block-sparse MLP trained by block RigL through experiments.train.

The run goes through ``train.train_and_evaluate`` (what the CLI calls after validation) on the real
mnist5k digits, with the XLA block-sparse path forced so the sparse kernels, not the dense fallback that
``impl=auto`` picks for tiny CPU shapes, compute every step.
"""

import glob
import json
import os

import pytest

import sparsejax as sj
from configs import block_rigl_mlp
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
    with pytest.raises(
        ConfigError, match="layer block_1 computes 6 of 64 blocks but its mask keeps 32"
    ):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))

"""Full Fashion-MNIST from the original idx files (Debian's ``dataset-fashion-mnist``): split, order, training.

CI installs the package (``.ci/run``), so there these tests never skip (``SPARSEJAX_REQUIRE_DATA=1``).
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import base
from experiments import data, sources
from experiments.errors import ConfigError

DIR = sources.IDX_DIRS["fashion_mnist"]
if not sources.idx_files_present(DIR):
    if os.environ.get("SPARSEJAX_REQUIRE_DATA"):
        raise RuntimeError(f"{DIR}: missing; apt-get install -y dataset-fashion-mnist")
    pytest.skip(f"{DIR} missing (apt-get install dataset-fashion-mnist)", allow_module_level=True)


def _config(**data_overrides):
    config = base.get_base_config()
    config.batch_size = 64
    config.data.name = "fashion_mnist"
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


def test_official_split_shapes_and_balanced_labels():
    train, test, info = data.open_sources(_config().data)
    assert (info.num_train, info.num_eval, info.num_classes) == (60000, 10000, 10)
    assert info.image_shape == (28, 28, 1)
    for split, per_class in ((train, 6000), (test, 1000)):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (28, 28, 1)
        assert split.images.max() == 255 and split.images.min() == 0
        # The official split is exactly balanced: 10 classes, labels 0..9.
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=11)[:10], per_class)
        assert split.labels.min() == 0 and split.labels.max() == 9
    # Train and test are different images (a handful of exact duplicates exist in the original data).
    train_rows = {r.tobytes() for r in train.images[::6]}
    assert sum(r.tobytes() in train_rows for r in test.images) < 50


def test_order_is_a_function_of_the_seed_and_resumes_exactly():
    pipeline = data.build(_config())
    it = pipeline.train_iterator()
    first = [next(it) for _ in range(3)]
    assert first[0]["image"].shape == (64, 28, 28, 1) and first[0]["image"].dtype == np.uint8
    state, after = it.get_state(), next(it)
    np.testing.assert_array_equal(next(pipeline.train_iterator(state))["image"], after["image"])
    again = data.build(_config()).train_iterator()
    for batch in first:
        np.testing.assert_array_equal(next(again)["label"], batch["label"])
    other = _config()
    other.seed = 1
    assert not np.array_equal(next(data.build(other).train_iterator())["label"], first[0]["label"])
    assert sum(int(b["mask"].sum()) for b in pipeline.eval_batches()) == 10000
    # Two processes each read their contiguous half of every global batch.
    halves = [next(data.build(_config(), i, 2).train_iterator()) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), first[0]["image"])


def test_bad_split_and_damaged_file_are_one_line(tmp_path):
    with pytest.raises(
        ConfigError, match=r"config.data.eval_split: 'validation'.*allowed: train, test"
    ):
        data.open_sources(_config(eval_split="validation").data)
    for name in os.listdir(DIR):
        shutil.copy(os.path.join(DIR, name), tmp_path / name)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        raw = f.read()
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(raw[:-10])  # truncated
    with pytest.raises(ConfigError, match="not a complete idx file") as e:
        data.open_sources(_config(idx_dir=str(tmp_path)).data)
    assert "\n" not in str(e.value)


def _train(tmp_path, *flags):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/rigl_resnet.py",
         "--config.data.name=fashion_mnist", "--config.data.augment=none", "--config.model.name=mlp",
         "--config.model.hidden=(256, 128)", f"--workdir={tmp_path / 'run'}", *flags],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_rigl_trains_through_the_cli_and_the_plots_read_the_run(tmp_path):
    out = _train(
        tmp_path,
        "--config.num_steps=12",
        "--config.log_every=4",
        "--config.eval_every=12",
        "--config.sparsity.update_every=4",
        "--config.data.max_eval_examples=512",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    (final,) = [r for r in rows if r["split"] == "eval"]
    assert final["step"] == 12 and 0.0 <= final["accuracy"] <= 1.0
    assert {4, 8, 12} <= {r["step"] for r in rows if r["split"] == "train"}
    assert all(np.isfinite(r["loss"]) for r in rows)

    from sparsejax import viz

    run = viz.read_workdir(tmp_path / "run")
    steps, layers = viz.per_layer_sparsity(run)
    assert len(steps) >= 3 and len(layers) == 3  # every Dense kernel, the head too
    _, consecutive, from_init = viz.sad_from_snapshots(run)
    assert consecutive[0] == 0 and from_init[-1] > 0  # masks moved on 60k-image batches
    _, itop = viz.itop_from_snapshots(run)
    assert np.all(np.diff(itop) >= 0) and itop[-1] > itop[0]
    plot = subprocess.run(
        [sys.executable, "-m", "experiments.plot", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plot.returncode == 0, plot.stderr[-2000:]


def test_missing_data_names_both_ways_to_get_it_before_anything_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _train(
        tmp_path,
        f"--config.data.idx_dir={tmp_path / 'nowhere'}",
        f"--config.data.tfds_data_dir={empty}",
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert (
        "apt-get install dataset-fashion-mnist" in lines[0]
        and "tfds build fashion_mnist" in lines[0]
    )
    assert str(tmp_path / "nowhere") in lines[0] and not (tmp_path / "run").exists()


def test_a_prepared_tfds_copy_under_tfds_data_dir_is_read_instead():
    """tests/data/fashion_mnist: the registered TFDS builder's PNG Image features over the first real
    images (tests/data/build_tfds_fixture.py); read without TensorFlow."""
    fixture = os.path.join(os.path.dirname(__file__), "data")
    train, test, info = data.open_sources(_config(tfds_data_dir=fixture).data)
    assert (info.num_train, info.num_eval, info.image_shape) == (64, 32, (28, 28, 1))
    assert "tensorflow" not in sys.modules
    idx_train, idx_test, _ = data.open_sources(_config().data)
    for split, real in ((train, idx_train), (test, idx_test)):
        records = [split[i] for i in range(len(split))]
        # TFDS shuffles records when it writes them: compare as sets of (image, label).
        got = sorted((r["image"].tobytes(), int(r["label"])) for r in records)
        want = sorted(
            (real[i]["image"].tobytes(), int(real[i]["label"])) for i in range(len(split))
        )
        assert got == want

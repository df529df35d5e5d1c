"""The TFDS path, offline: a tiny array_record dataset built in a tmp dir, and fast clear failures."""

import subprocess
import sys
import time

import numpy as np
import pytest

from configs import base
from experiments import data, synthetic_tfds
from experiments.errors import ConfigError


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    synthetic_tfds.build(str(path))
    return str(path)


def _config(tfds_dir, name=synthetic_tfds.NAME, **data_overrides):
    config = base.get_base_config()
    config.batch_size = 16
    config.data.name = name
    config.data.tfds_data_dir = tfds_dir
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


def test_reads_a_local_array_record_dataset_without_tensorflow(tfds_dir):
    assert "tensorflow" not in sys.modules
    pipeline = data.build(_config(tfds_dir, augment="crop_flip"))
    assert pipeline.info.num_classes == 10 and pipeline.image_shape == (32, 32, 3)
    assert (pipeline.info.num_train, pipeline.info.num_eval) == (512, 128)
    it = pipeline.train_iterator()
    batch = next(it)
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.uint8
    state, expected = it.get_state(), next(it)
    np.testing.assert_array_equal(next(pipeline.train_iterator(state))["image"], expected["image"])
    assert sum(int(b["mask"].sum()) for b in pipeline.eval_batches()) == 128


def test_resize_for_a_fixed_image_size(tfds_dir):
    pipeline = data.build(_config(tfds_dir, image_size=24, augment="inception"))
    assert next(pipeline.train_iterator())["image"].shape == (16, 24, 24, 3)
    assert next(pipeline.eval_batches())["image"].shape == (16, 24, 24, 3)


def test_unprepared_dataset_fails_at_once_saying_where_and_how(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        data.build(_config(str(tmp_path), name="cifar10"))
    assert time.perf_counter() - start < 10  # never the ~200 s download attempt
    message = str(e.value)
    assert str(tmp_path) in message and "tfds build cifar10" in message and "\n" not in message


def test_unknown_dataset_and_bad_split_are_clear(tfds_dir):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1O'"):
        data.build(_config(tfds_dir, name="cifar1O"))
    with pytest.raises(ConfigError, match="config.data.eval_split.*allowed: "):
        data.build(_config(tfds_dir, eval_split="validation"))
    with pytest.raises(ConfigError, match="config.data.image_key.*allowed: image, label"):
        data.build(_config(tfds_dir, image_key="img"))


def test_module_cli_builds_the_dataset(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.synthetic_tfds", f"--data_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / synthetic_tfds.NAME / "1.0.0" / "dataset_info.json").exists()

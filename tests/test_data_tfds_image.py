"""A real-format TFDS dataset (PNG ``Image`` + ``ClassLabel``, as ``tfds build cifar10`` writes) read
without TensorFlow: the committed fixture in tests/data (built by tests/data/build_tfds_fixture.py)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import rigl_resnet
from experiments import data, sources
from experiments.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "tests", "data")
TFRECORD_DIR = os.path.join(DATA_DIR, "tfrecord")
_spec = importlib.util.spec_from_file_location(
    "build_tfds_fixture", os.path.join(DATA_DIR, "build_tfds_fixture.py")
)
fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture)
with open(fixture.CHECKSUMS) as _f:
    ENCODED = json.load(_f)  # what the builder encoded: sizes and pixel/label sha256 per split

# Runs experiments.train (argv after -c) as if TensorFlow were not installed, set up before anything
# of experiments, TFDS or JAX is imported: one meta-path finder wraps the interpreter's own and finds no
# `tensorflow` module, so `import tensorflow` raises ModuleNotFoundError and
# `importlib.util.find_spec("tensorflow")` (how TFDS and etils probe for it) is None, even where
# TensorFlow is installed. Exits 3 if TensorFlow got in anyway.
_NO_TENSORFLOW = """
import atexit, importlib.abc, importlib.util, os, runpy, sys

class HideTensorFlow(importlib.abc.MetaPathFinder):
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None

    def invalidate_caches(self):
        for finder in self.finders:
            getattr(finder, "invalidate_caches", lambda: None)()

    def find_distributions(self, *args, **kwargs):  # importlib.metadata asks every finder
        for finder in self.finders:
            yield from getattr(finder, "find_distributions", lambda *a, **k: ())(*args, **kwargs)

sys.meta_path[:] = [HideTensorFlow(list(sys.meta_path))]
assert importlib.util.find_spec("tensorflow") is None
try:
    import tensorflow  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    sys.exit(3)

def check():
    if any(m.partition(".")[0] == "tensorflow" for m in sys.modules):
        print("error: tensorflow was imported", file=sys.stderr, flush=True)
        os._exit(3)

atexit.register(check)
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""


def _cifar10_config(data_dir=DATA_DIR, **data_overrides):
    config = rigl_resnet.get_config("cifar10")
    config.batch_size = 32
    config.data.tfds_data_dir = data_dir
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


def _train_cli(workdir, *overrides, log_compiles=False):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1" if log_compiles else "0"}
    return subprocess.run(
        [sys.executable, "-c", _NO_TENSORFLOW, "--config=configs/rigl_resnet.py:cifar10"]
        + [f"--workdir={workdir}", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _by_id(source):
    """All records of a TFDS split, in the builder's generation order (TFDS shuffles on write)."""
    records = [source[i] for i in range(len(source))]
    return sorted(records, key=lambda r: int(r["id"].decode().rsplit("_", 1)[1]))


@pytest.fixture(scope="module")
def decoded():
    """Per split: the records' ids, images and labels as TFDS decodes them, in generation order."""
    assert "tensorflow" not in sys.modules
    train, test, info = sources.tfds("cifar10", DATA_DIR, False, "train", "test")
    assert (info.name, info.num_classes, info.image_shape) == ("cifar10", 10, (32, 32, 3))
    assert (info.num_train, info.num_eval) == tuple(
        ENCODED["splits"][s]["num_examples"] for s in ("train", "test")
    )
    out = {}
    for split, source in (("train", train), ("test", test)):
        records = _by_id(source.source)
        # The renamed source the pipeline reads gives each record's decoded image.
        np.testing.assert_array_equal(source[0]["image"], np.asarray(source.source[0]["image"]))
        out[split] = (
            [r["id"].decode() for r in records],
            np.stack([np.asarray(r["image"]) for r in records]),
            np.array([r["label"] for r in records], np.int64),
        )
    return out


@pytest.mark.parametrize("split", ["train", "test"])
def test_pngs_decode_to_the_pixels_that_were_encoded(decoded, split):
    ids, images, labels = decoded[split]
    n = ENCODED["splits"][split]["num_examples"]
    assert ids == [f"{split}_{i:05d}" for i in range(n)]
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < 10 and len(np.unique(labels)) == 10
    # PNG is lossless: the decoded pixels are bit-for-bit those the builder handed to the encoder.
    assert fixture.digest(images) == ENCODED["splits"][split]["images_sha256"]
    assert fixture.digest(labels) == ENCODED["splits"][split]["labels_sha256"]


def test_fixture_is_the_registered_cifar10_in_array_record():
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=DATA_DIR)
    assert builder.is_prepared() and str(builder.version) == ENCODED["version"]
    assert str(builder.version) == str(tfds.builder_cls("cifar10").VERSION)
    features = builder.info.features
    assert isinstance(features["image"], tfds.features.Image)
    assert features["image"].shape == (32, 32, 3)
    assert isinstance(features["label"], tfds.features.ClassLabel)
    assert features["label"].names == list(fixture.LABEL_NAMES)
    assert builder.info.file_format.value == "array_record"


def test_fixture_is_learnable(decoded):
    """Nearest class mean of the train images classifies the test images far above chance (10%)."""
    (_, train_x, train_y), (_, test_x, test_y) = decoded["train"], decoded["test"]
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)
    means = np.stack([flat(train_x)[train_y == c].mean(0) for c in range(10)])
    predicted = ((flat(test_x)[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test_y).mean() > 0.5


def test_pipeline_batches_are_augmented_and_deterministic(decoded):
    config = _cifar10_config()
    assert config.data.augment == "crop_flip"
    pipeline = data.build(config)
    assert pipeline.image_shape == (32, 32, 3)
    it, again = pipeline.train_iterator(), data.build(_cifar10_config()).train_iterator()
    stored = {fixture.digest(image) for image in decoded["train"][1]}
    changed = 0
    for _ in range(3):
        batch, repeat = next(it), next(again)
        assert batch["image"].shape == (32, 32, 32, 3) and batch["image"].dtype == np.uint8
        np.testing.assert_array_equal(batch["image"], repeat["image"])
        np.testing.assert_array_equal(batch["label"], repeat["label"])
        changed += sum(fixture.digest(image) not in stored for image in batch["image"])
    # Crop (zero padding) and flip leave an image as stored with probability 1/81 x 1/2.
    assert changed > 48
    eval_rows = sum(int(b["mask"].sum()) for b in pipeline.eval_batches())
    assert eval_rows == ENCODED["splits"]["test"]["num_examples"]


def test_bad_split_slice_names_the_key():
    with pytest.raises(ConfigError) as e:
        data.build(_cifar10_config(eval_split="test[:abc]"))
    message = str(e.value)
    assert message.startswith("config.data.eval_split: 'test[:abc]'") and "\n" not in message


def test_tfrecord_dataset_gives_the_rebuild_hint():
    with pytest.raises(ConfigError) as e:
        sources.tfds("cifar10", TFRECORD_DIR, False, "train", "test")
    message = str(e.value)
    assert "\n" not in message and "tfrecord" in message
    assert "--file_format=array_record" in message and TFRECORD_DIR in message


@pytest.mark.slow
def test_cli_trains_and_evaluates_on_the_fixture_without_tensorflow(tmp_path):
    workdir = tmp_path / "run"
    out = _train_cli(
        workdir,
        f"--config.data.tfds_data_dir={os.path.relpath(DATA_DIR, ROOT)}",
        "--config.num_steps=4",
        "--config.batch_size=16",
        # The preset's wide ResNet at depth 10, width x1: the same code, compiled in half the time.
        "--config.model.depth=10",
        "--config.model.widen=1",
        "--config.log_every=1",
        "--config.eval_every=0",
        "--config.checkpoint_every=0",
        "--config.sparsity.update_every=2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / "config.json") as f:
        resolved = json.load(f)
    assert resolved["data"]["augment"] == "crop_flip" and resolved["model"]["name"] == "wrn22_2"
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    train_rows = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [4] and 0.0 <= evals[0]["accuracy"] <= 1.0
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert any("dropped" in r for r in train_rows)  # RigL updated its masks on these images


def _compiled(stderr):
    """Names of the functions JAX compiled (JAX_LOG_COMPILES=1), and the other stderr lines."""
    names = re.findall(r"^Compiling (\S+?)(?: with|\s|$)", stderr, re.MULTILINE)
    jax_log = ("Compiling ", "Finished ")
    return set(names), [line for line in stderr.splitlines() if not line.startswith(jax_log)]


def test_cli_tfrecord_dataset_fails_in_one_line_before_any_compile(tmp_path):
    out = _train_cli(
        tmp_path / "run",
        f"--config.data.tfds_data_dir={os.path.relpath(TFRECORD_DIR, ROOT)}",
        log_compiles=True,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    compiled, lines = _compiled(out.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: config.data.name:"), out.stderr
    assert "--file_format=array_record" in lines[0] and "tfrecord" in lines[0]
    # Nothing compiled but what importing the library compiles (no model, no step).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1"}
    at_import = subprocess.run(
        [sys.executable, "-c", "import sparsejax"], env=env, capture_output=True, text=True
    )
    assert compiled <= _compiled(at_import.stderr)[0], compiled

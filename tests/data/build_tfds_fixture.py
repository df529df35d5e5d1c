r"""Build the tiny CIFAR-10 fixture in the real TFDS format (PNG ``Image`` + ``ClassLabel`` features).

A real prepared CIFAR-10 (``tfds build cifar10``) stores PNG-encoded ``tfds.features.Image`` features;
this fixture is the same thing in miniature, built by the registered ``cifar10`` builder itself (same
name, version and features) with a generator of small synthetic images in place of the download:

    tests/data/cifar10/<version>/            array_record, 256 train / 128 test images (what tests read)
    tests/data/tfrecord/cifar10/<version>/   tfrecord (the TFDS default), 8 / 4 images (the rebuild hint)
    tests/data/cifar10_fixture.json          sizes and sha256 of the pixels and labels that were encoded
    tests/data/fashion_mnist/<version>/      array_record, the first 64 train / 32 test images of the real
                                             Fashion-MNIST (its idx files: apt-get install dataset-fashion-mnist)

Encoding PNG needs TensorFlow, so build it once in a scratch venv (reading it back does not):

    python -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tensorflow-datasets pillow
    /tmp/tfvenv/bin/python tests/data/build_tfds_fixture.py

Images are 32x32x3 uint8 from a seeded numpy RNG: each class has its own colour and stripe pattern
(horizontal for classes 0-4, vertical for 5-9, period by class), plus a random phase, a per-image colour
shift and blocky grey noise (blocky so the PNGs stay small): learnable, not trivial (the nearest class
mean of the train pixels classifies 92% of the test images).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = "cifar10"
SHAPE = (32, 32, 3)
NUM_CLASSES = 10
SIZES = {"train": 256, "test": 128}  # the array_record fixture
TFRECORD_SIZES = {"train": 8, "test": 4}  # the tfrecord copy: only its format matters
SEEDS = {"train": 0, "test": 1}
CHECKSUMS = os.path.join(HERE, "cifar10_fixture.json")
# The real CIFAR-10 label names (its batches.meta.txt), in label order.
LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [128, 128, 128],
    ],
    np.float32,
)
_NOISE_BLOCK = 4


def _image(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 32x32x3 uint8 image of class ``label``."""
    period = 4 + 2 * (label % 5)
    axis = np.arange(SHAPE[0])
    stripes = ((axis + rng.integers(0, period)) // (period // 2)) % 2 * 2 - 1.0
    stripes = np.broadcast_to(stripes[:, None] if label < 5 else stripes[None, :], SHAPE[:2])
    image = _PALETTE[label] * 0.7 + 30.0 * stripes[..., None] + rng.normal(0.0, 20.0, 3)
    cells = SHAPE[0] // _NOISE_BLOCK
    noise = rng.normal(0.0, 16.0, (cells, cells, 1))
    image = image + noise.repeat(_NOISE_BLOCK, 0).repeat(_NOISE_BLOCK, 1)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def generate(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images (uint8 NHWC) and labels (int64) of ``split``, a pure function of its seed."""
    rng = np.random.default_rng(SEEDS[split])
    labels = rng.permutation(np.arange(max(n, SIZES[split])) % NUM_CLASSES)
    images = np.stack([_image(int(label), rng) for label in labels])
    return images[:n], labels[:n].astype(np.int64)


def digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (what the tests compare after decoding)."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()


def _builder_class():
    """The registered cifar10 builder with the download replaced by :func:`generate`."""
    import tensorflow_datasets as tfds

    class Cifar10Fixture(tfds.builder_cls(NAME), skip_registration=True):
        """CIFAR-10's own builder (name, version, features) over :func:`generate`."""

        name = NAME  # not derived from the class name

        def __init__(self, *, sizes: dict[str, int], **kwargs):
            self._sizes = sizes
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            self.info.features["label"].names = LABEL_NAMES
            return {split: self._generate_examples(split, n) for split, n in self._sizes.items()}

        def _generate_examples(self, split: str, n: int):
            images, labels = generate(split, n)
            for index, (image, label) in enumerate(zip(images, labels)):
                # Keys and ids as the real builder writes them.
                yield index, {"id": f"{split}_{index:05d}", "image": image, "label": int(label)}

    return Cifar10Fixture


def build(data_dir: str, sizes: dict[str, int], file_format: str) -> str:
    """Prepare the fixture under ``data_dir`` (replacing any earlier one); returns its directory."""
    import tensorflow_datasets as tfds

    shutil.rmtree(os.path.join(data_dir, NAME), ignore_errors=True)
    builder = _builder_class()(sizes=sizes, data_dir=data_dir, file_format=file_format)
    tfds.disable_progress_bar()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return str(builder.data_dir)


FASHION_SIZES = {"train": 64, "test": 32}


def build_fashion_mnist(data_dir: str) -> str:
    """The registered ``fashion_mnist`` builder over the first images of the real idx files."""
    import sys

    import tensorflow_datasets as tfds

    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from experiments import sources

    class FashionMnistFixture(tfds.builder_cls("fashion_mnist"), skip_registration=True):
        name = "fashion_mnist"

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in FASHION_SIZES}

        def _generate_examples(self, split: str):
            images, labels = sources._idx_arrays(sources.IDX_DIRS["fashion_mnist"], split)
            for index in range(FASHION_SIZES[split]):
                yield index, {"image": images[index], "label": int(labels[index])}

    shutil.rmtree(os.path.join(data_dir, "fashion_mnist"), ignore_errors=True)
    builder = FashionMnistFixture(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return str(builder.data_dir)


def main() -> None:
    out = build(HERE, SIZES, "array_record")
    tiny = build(os.path.join(HERE, "tfrecord"), TFRECORD_SIZES, "tfrecord")
    record = {"name": NAME, "version": os.path.basename(out), "splits": {}}
    for split, n in SIZES.items():
        images, labels = generate(split, n)
        record["splits"][split] = {
            "num_examples": n,
            "images_sha256": digest(images),
            "labels_sha256": digest(labels),
        }
    with open(CHECKSUMS, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    fashion = build_fashion_mnist(HERE)
    print(f"built {out}, {tiny} and {fashion}; checksums in {CHECKSUMS}")


if __name__ == "__main__":
    main()

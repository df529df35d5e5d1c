"""A tiny CIFAR-shaped TFDS dataset built locally, for offline tests and demos of the TFDS path.

    python -m experiments.synthetic_tfds --data_dir=/tmp/tfds
    python -m experiments.train --config=configs/rigl_resnet.py:cifar10 \
        --config.data.name=synthetic_images --config.data.tfds_data_dir=/tmp/tfds ...

Images are 32x32x3 uint8: each class has its own colour and stripe orientation plus noise, so a small
network learns it well above chance. Stored as ``array_record`` with ``tfds.features.Tensor`` images,
which ``tfds.data_source`` reads without TensorFlow. Once built, any process finds it by name in
``data_dir`` (TFDS reads unregistered datasets from their files).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags

NAME = "synthetic_images"
SHAPE = (32, 32, 3)
NUM_CLASSES = 10
SPLITS = {"train": 512, "test": 128}


def _image(label: int, rng: np.random.Generator) -> np.ndarray:
    colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    angle = np.pi * label / NUM_CLASSES
    stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.8)
    image = colour * 0.6 + 100.0 * stripes[..., None] + rng.normal(0.0, 25.0, SHAPE)
    return np.clip(image, 0, 255).astype(np.uint8)


class SyntheticImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """CIFAR-shaped synthetic images with 10 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in SPLITS.items()}

    def _generate_examples(self, split: str, n: int):
        rng = np.random.default_rng(0 if split == "train" else 1)
        for i in range(n):
            label = i % NUM_CLASSES
            yield f"{split}_{i}", {"image": _image(label, rng), "label": label}


def build(data_dir: str) -> str:
    """Prepare the dataset under ``data_dir`` (a no-op if already there); returns its name."""
    builder = SyntheticImages(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        tfds.disable_progress_bar()
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return NAME


def main(argv: list[str]) -> None:
    del argv
    # TFDS locates a builder's resources through its module's package, which `__main__` has none of.
    from experiments import synthetic_tfds

    data_dir = flags.FLAGS.data_dir
    print(f"built {synthetic_tfds.build(data_dir)} in {data_dir}")


if __name__ == "__main__":
    # Defined here, not at import, so importing this module adds no flags to other programs.
    flags.DEFINE_string("data_dir", None, "TFDS data directory to build into.", required=True)
    app.run(main)

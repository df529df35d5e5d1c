"""Input pipelines: deterministic, checkpointable grain pipelines over the sources in ``sources.py``.

Train: shuffle (per-epoch reshuffle derived from ``config.seed``) -> repeat forever -> augment (per-record RNG
derived from the seed and the record's global index) -> batch. Batch ``t`` is therefore a pure function of
``(seed, t)``, and the grain iterator's state (``{"next_index": t}``) is the exact resume position.
Images leave the host as uint8; normalisation happens on device inside the jitted step (cheaper transfers).

Several processes (``jax.distributed``): each process reads, transforms and batches only its contiguous
rows of every global batch (``process_count`` equal slices, in process order, as
``experiments.multihost.process_rows``), with the same record and batch RNG as a single process, so the
global batch ``t`` is the same however many processes feed it. Eval batches are split the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from experiments import array_batches, sources, text
from experiments.errors import ConfigError

AUGMENTATIONS = ("none", "crop", "crop_flip", "inception")
# Eval images are resized so the center crop keeps this fraction of the shorter side (ImageNet convention).
_CENTER_CROP_FRACTION = 0.875


@dataclasses.dataclass
class Pipeline:
    """Train/eval datasets plus the facts the model and the train step need."""

    info: sources.SourceInfo
    image_shape: tuple[int, int, int]  # what the model sees
    mean: np.ndarray  # per-channel, in [0, 1] units, for on-device normalisation
    std: np.ndarray
    # Batched, this process's rows of each global batch: train infinite; eval one pass, its last batch
    # short (or, on a process past the end of the split, missing: eval_batches pads it).
    train: grain.MapDataset
    eval: grain.MapDataset
    # Global rows of a train / eval batch; each process yields batch_size // process_count of them.
    batch_size: int
    eval_batch_size: int
    num_threads: int
    process_index: int = 0
    process_count: int = 1
    num_eval_batches: int = 0  # global eval batches; every process yields this many (collectives)

    def train_iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
        """A train iterator, positioned at ``state`` (from ``iterator.get_state()``) when given."""
        options = grain.ReadOptions(
            num_threads=self.num_threads, prefetch_buffer_size=2 * self.num_threads
        )
        iterator = iter(self.train.to_iter_dataset(options))
        if state is not None:
            iterator.set_state(state)
        return iterator

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the eval split in fixed-size batches; ``mask`` marks the real (non-padding) rows.

        With several processes, this process's rows of each global batch; a process whose rows of the
        last (short) batch are all padding still yields it, so every process runs the same eval steps.
        """
        options = grain.ReadOptions(
            num_threads=self.num_threads, prefetch_buffer_size=2 * self.num_threads
        )
        rows = self.eval_batch_size // self.process_count
        batches = iter(self.eval.to_iter_dataset(options))
        for _ in range(self.num_eval_batches):
            batch = next(batches, None)
            if batch is None:  # past the end of the split on this process: all padding
                batch = {
                    "image": np.zeros((0, *self.image_shape), np.uint8),
                    "label": np.zeros((0,), np.int32),
                }
            n = len(batch["label"])
            pad = rows - n
            mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
            yield {
                "image": np.pad(batch["image"], [(0, pad)] + [(0, 0)] * 3),
                "label": np.pad(batch["label"], (0, pad)),
                "mask": mask,
            }


def _to_hwc(image: np.ndarray) -> np.ndarray:
    return image[..., None] if image.ndim == 2 else image


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return _to_hwc(out)


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size / 0.875`` and take the central ``size x size`` square."""
    h, w = image.shape[:2]
    scale = size / _CENTER_CROP_FRACTION / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    image = _resize(image, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[top : top + size, left : left + size]


def _random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Inception-style crop: area in [8%, 100%], aspect ratio in [3/4, 4/3], resized to ``size``."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = round(np.sqrt(area / ratio)), round(np.sqrt(area * ratio))
        if 0 < ch <= h and 0 < cw <= w:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            return _resize(image[top : top + ch, left : left + cw], size, size)
    return _center_crop(image, size)


def _make_record_transform(augment: str, image_size: int):
    """Per-record work that must happen before batching: anything that changes the image size."""

    def transform(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = _to_hwc(np.asarray(record["image"], np.uint8))
        if augment == "inception":
            image = _random_resized_crop(image, image_size, rng)
        elif image_size and image.shape[:2] != (image_size, image_size):
            image = _center_crop(image, image_size)
        return {"image": np.ascontiguousarray(image), "label": np.int32(record["label"])}

    return transform


def _make_batch_transform(augment: str, padding: int, rows: slice | None = None, size: int = 0):
    """Random crop (zero padding) and horizontal flip, vectorised over a batch (far cheaper than per record).

    ``rows``/``size``: the batch holds rows ``rows`` of a global batch of ``size`` rows; the random draws
    are made for the whole global batch and sliced, so every row gets what a single process gives it.
    """

    def transform(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        images = batch["image"]
        n, h, w, _ = images.shape
        total, mine = (size, rows) if rows is not None else (n, slice(None))
        if augment in ("crop", "crop_flip") and padding:
            padded = np.pad(images, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
            windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
            top, left = rng.integers(0, 2 * padding + 1, size=(2, total))[:, mine]
            images = np.moveaxis(windows[np.arange(n), top, left], 1, -1)  # (n, c, h, w) -> NHWC
        if augment in ("crop_flip", "inception"):
            flip = (rng.random(total) < 0.5)[mine]
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        return {"image": np.ascontiguousarray(images), "label": batch["label"]}

    return transform


def _make_eval_transform(image_size: int):
    def transform(record: dict[str, Any]) -> dict[str, Any]:
        image = _to_hwc(np.asarray(record["image"], np.uint8))
        if image_size and image.shape[:2] != (image_size, image_size):
            image = _center_crop(image, image_size)
        return {"image": image, "label": np.int32(record["label"])}

    return transform


def _channel_stats(dataset: grain.MapDataset, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std over 512 evenly spaced eval-transformed train records; deterministic."""
    # Evenly spaced, not the first 512: embedded sources are sorted by label.
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(512, len(dataset))).astype(int))
    images = [
        dataset[int(i)]["image"].reshape(-1, channels).astype(np.float64) / 255.0 for i in indices
    ]
    mean = np.mean([x.mean(0) for x in images], axis=0)
    std = np.sqrt(np.maximum(np.mean([(x**2).mean(0) for x in images], axis=0) - mean**2, 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


def open_sources(data: ml_collections.ConfigDict):
    """Train source, eval source and info for ``config.data``."""
    if data.name in sources.EMBEDDED:
        return sources.embedded(data.name)
    if data.name in sources.IDX_DIRS:
        return sources.idx_or_tfds(data.name, data)
    return sources.tfds(
        data.name,
        data.tfds_data_dir or None,
        bool(data.download),
        data.train_split,
        data.eval_split,
        data.image_key,
        data.label_key,
    )


def _process_split(rows: int, process_index: int, process_count: int, what: str) -> int:
    """This process's share of a global batch of ``rows``; one clear error when it does not split."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    if rows % process_count:
        raise ConfigError(
            f"config.{what}={rows}: must be a multiple of the {process_count} processes"
        )
    return rows // process_count


def build(
    config: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Pipeline:
    """The input pipeline for ``config`` (uses ``config.data``, ``config.seed`` and batch sizes).

    ``process_index``/``process_count`` (default: ``jax.process_index()``/``jax.process_count()``) pick
    the rows of every global batch that this process reads (see the module docstring).
    """
    data = config.data
    if data.name in text.SOURCES:  # byte-level language modelling (experiments/text.py)
        return text.build(config)
    if data.augment not in AUGMENTATIONS:
        raise ConfigError(
            f"config.data.augment: unknown augmentation {data.augment!r}; allowed: {', '.join(AUGMENTATIONS)}"
        )
    train_src, eval_src, info = open_sources(data)
    size = int(data.image_size)
    h, w, c = info.image_shape
    if (h is None or w is None) and not size:
        raise ConfigError(
            f"config.data.image_size: {info.name} has images of varying size; set a positive image_size "
            f"(e.g. 224)"
        )
    image_shape = (size, size, c) if size else (h, w, c)
    seed = int(config.seed) % 2**32
    eval_transform = _make_eval_transform(size)
    if process_index is None or process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    batch_size = int(config.batch_size)
    local = _process_split(batch_size, process_index, process_count, "batch_size")
    rows = slice(process_index * local, (process_index + 1) * local)
    if array_batches.applies(train_src, data.augment, size):  # the same batches, one gather each
        train = array_batches.batches(train_src, seed, rows, batch_size)
    else:
        # Shuffle before repeat: grain then reshuffles every epoch with seed + epoch.
        train = grain.MapDataset.source(train_src).shuffle(seed=seed).repeat(None)
        train = train.random_map(_make_record_transform(data.augment, size), seed=seed)
        # Global batch t is records [t*B, (t+1)*B); its rows for process i are local batch t*n + i.
        train = train.batch(local, drop_remainder=True)
        if process_count > 1:
            train = train.slice(slice(process_index, None, process_count))
    if data.augment != "none":
        # Batch-level RNG is seeded by (seed, batch index), so the augmentation stays a function of step.
        train = train.random_map(
            _make_batch_transform(data.augment, int(data.crop_padding), rows, batch_size),
            seed=seed + 1,
        )
    eval_batch_size = int(config.eval_batch_size or config.batch_size)
    local_eval = _process_split(
        eval_batch_size, process_index, process_count, "eval_batch_size (0: batch_size)"
    )
    evals = grain.MapDataset.source(eval_src).map(eval_transform)
    if data.max_eval_examples:
        evals = evals.slice(slice(0, int(data.max_eval_examples)))
    num_eval_batches = -(-len(evals) // eval_batch_size)
    evals = evals.batch(local_eval, drop_remainder=False)
    if process_count > 1:
        evals = evals.slice(slice(process_index, None, process_count))
    mean, std = _channel_stats(grain.MapDataset.source(train_src).map(eval_transform), c)
    return Pipeline(
        info=info,
        image_shape=image_shape,
        mean=mean,
        std=std,
        train=train,
        eval=evals,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_threads=int(data.num_threads),
        process_index=process_index,
        process_count=process_count,
        num_eval_batches=num_eval_batches,
    )

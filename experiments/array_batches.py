"""Train batches of an in-memory source, read a whole batch at a time.

grain's per-record pipeline (shuffle, repeat, a record transform, batch) costs about 90 us per record
on a 2-core CPU: 23 ms for a batch of 256 mnist digits, more than a compressed block-sparse train step
of that batch (``benchmarks/results/input_pipeline.md``). When the records are arrays in memory
(``sources.ArraySource``: the embedded datasets and IDX files) and need no per-record work (no resize,
no Inception crop), :func:`batches` builds the same batches with one gather each: position ``p`` of the
shuffled, repeated record stream is record ``index_shuffle(p % n, seed + p // n)``, the permutation
grain's ``shuffle(seed).repeat(None)`` applies, so the batches are bit-identical to the per-record
pipeline's (``tests/test_data.py``), resume included (the iterator state is the batch index).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grain
import numpy as np
from grain.experimental import index_shuffle

from experiments import sources

_ROUNDS = 4  # grain's shuffle


def applies(source: object, augment: str, image_size: int) -> bool:
    """Whether :func:`batches` can stand in for the per-record pipeline of ``source``."""
    if not isinstance(source, sources.ArraySource) or augment == "inception":
        return False
    return not image_size or tuple(source.images.shape[1:3]) == (image_size, image_size)


class _BatchIndex(Sequence):
    """The endless sequence 0, 1, 2, ...: element ``t`` of the dataset is train batch ``t``."""

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: int) -> int:
        return index


def batches(
    source: sources.ArraySource, seed: int, rows: slice, batch_size: int
) -> grain.MapDataset:
    """Element ``t``: ``rows`` of global train batch ``t`` (records ``[t * B, (t + 1) * B)`` of the
    shuffled stream, ``B = batch_size``), as ``{"image": uint8 NHWC, "label": int32}``."""
    n = len(source)
    images = np.asarray(source.images, np.uint8)
    images = images if images.ndim == 4 else images[..., None]
    labels = source.labels.astype(np.int32)
    offsets = np.arange(batch_size)[rows]

    def batch(t: int) -> dict[str, np.ndarray]:
        epoch, position = np.divmod(t * batch_size + offsets, n)
        index = [
            index_shuffle(int(k), max_index=n - 1, seed=int((seed + e) % 2**32), rounds=_ROUNDS)
            for k, e in zip(position, epoch)
        ]
        return {"image": images[index], "label": labels[index]}

    return grain.MapDataset.source(_BatchIndex()).map(batch)

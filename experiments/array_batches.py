"""Train batches of an in-memory source, read a whole batch at a time.

grain's per-record pipeline (shuffle, repeat, a record transform, batch) costs about 90 us per record
on a 2-core CPU: 23 ms for a batch of 256 mnist digits, more than a compressed block-sparse train step
of that batch (``benchmarks/results/input_pipeline.md``). When the records are arrays in memory
(``sources.ArraySource``: the embedded datasets and IDX files) and need no per-record work (no resize,
no Inception crop), :func:`batches` builds the same batches with one gather each. Position ``p`` of the
shuffled, repeated record stream is record ``perm(p // n)[p % n]``, where ``perm(e)`` is epoch ``e``'s
permutation as grain's ``shuffle(seed).repeat(None)`` computes it (``index_shuffle`` with seed
``seed + e``), here vectorised (:func:`index_shuffle`) and computed once per epoch. The batches are
bit-identical to the per-record pipeline's (``tests/test_data.py``), resume included: the iterator
state is the batch index.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence

import grain
import numpy as np

from experiments import sources

_ROUNDS = 4  # grain's shuffle: a 4-round Simon cipher on the smallest even block of >= 16 bits
_M32 = 0xFFFFFFFF
_TABLE_MAX_HALF_BITS = 11  # cipher spaces up to 2**22 values are tabulated (32 MB of uint64)


def applies(source: object, augment: str, image_size: int) -> bool:
    """Whether :func:`batches` can stand in for the per-record pipeline of ``source``."""
    if not isinstance(source, sources.ArraySource) or augment == "inception":
        return False
    return not image_size or tuple(source.images.shape[1:3]) == (image_size, image_size)


def _round_keys(seed: int, n: int) -> list[int]:
    """``std::seed_seq{seed}.generate`` of ``n`` 32-bit words (the C++ standard's algorithm)."""
    b, s, t = [0x8B8B8B8B] * n, 1, (n - 1) // 2  # t: the standard's value for n < 7
    p = (n - t) // 2
    q, m = p + t, max(s + 1, n)

    def mix(x: int) -> int:
        return x ^ (x >> 27)

    for k in range(m):
        r1 = (1664525 * mix(b[k % n] ^ b[(k + p) % n] ^ b[(k - 1) % n])) & _M32
        r2 = (r1 + (s if k == 0 else k % n + (seed if k <= s else 0))) & _M32
        b[(k + p) % n] = (b[(k + p) % n] + r1) & _M32
        b[(k + q) % n] = (b[(k + q) % n] + r2) & _M32
        b[k % n] = r2
    for k in range(m, m + n):
        r3 = (1566083941 * mix((b[k % n] + b[(k + p) % n] + b[(k - 1) % n]) & _M32)) & _M32
        r4 = (r3 - k % n) & _M32
        b[(k + p) % n] ^= r3
        b[(k + q) % n] ^= r4
        b[k % n] = r4
    return b


def index_shuffle(index: np.ndarray, max_index: int, seed: int) -> np.ndarray:
    """``grain.experimental.index_shuffle(i, max_index=, seed=, rounds=4)`` for every ``i`` of
    ``index`` at once: a Simon cipher on ``w``-bit halves, re-applied until the value is in range."""
    if max_index == 0:
        return np.zeros(np.shape(index), np.int64)
    bits = int(np.ceil(np.log2(max_index)))
    w = max(bits + bits % 2, 16) // 2
    mask, half = np.uint64((1 << w) - 1), np.uint64(w)
    keys = [np.uint64(k) & mask for k in _round_keys(seed % 2**32, _ROUNDS)]

    def rotl(x: np.ndarray, r: int) -> np.ndarray:
        return ((x << np.uint64(r)) | (x >> np.uint64(w - r))) & mask

    def encrypt(v: np.ndarray) -> np.ndarray:
        left, right = (v >> half) & mask, v & mask
        for k1, k2 in zip(keys[::2], keys[1::2]):
            left = left ^ ((rotl(right, 1) & rotl(right, 8)) ^ rotl(right, 2)) ^ k1
            right = right ^ ((rotl(left, 1) & rotl(left, 8)) ^ rotl(left, 2)) ^ k2
        return (left << half) | right

    step = encrypt
    if w <= _TABLE_MAX_HALF_BITS:  # encrypt the whole space once: each walk step is then a lookup
        table = encrypt(np.arange(1 << (2 * w), dtype=np.uint64))
        step = table.__getitem__
    out = step(np.asarray(index, np.uint64))
    while (outside := out > np.uint64(max_index)).any():  # cycle-walking
        out[outside] = step(out[outside])
    return out.astype(np.int64)


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

    @functools.lru_cache(maxsize=4)  # a batch spans at most two epochs
    def permutation(epoch: int) -> np.ndarray:
        return index_shuffle(np.arange(n), n - 1, seed + epoch)

    def batch(t: int) -> dict[str, np.ndarray]:
        epoch, position = np.divmod(t * batch_size + offsets, n)
        index = np.empty_like(position)
        for e in np.unique(epoch):
            index[epoch == e] = permutation(int(e))[position[epoch == e]]
        return {"image": images[index], "label": labels[index]}

    return grain.MapDataset.source(_BatchIndex()).map(batch)

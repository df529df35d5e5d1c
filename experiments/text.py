"""An embedded English text corpus for byte-level language modelling, and its input pipeline.

``pydoc_text``: the Python Language Reference / library topics that CPython ships as
``pydoc_data/topics.py`` (the text ``help("topics")`` prints): 79 topics, ~466 KB of real English
technical prose with code examples, present in every CPython install, so no download. Topics are
joined in sorted order and encoded as UTF-8 bytes (vocabulary 256). Fixed split: the first 90% of the
bytes train, the last 10% evaluate. Examples are non-overlapping windows of ``seq_len + 1`` bytes;
``image`` holds the first ``seq_len`` (inputs), ``label`` the next-token targets. The pipeline has the
interface of ``experiments.data.Pipeline`` (``mean is None``: tokens are fed to the model as they are).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import grain
import ml_collections
import numpy as np

from experiments.sources import SourceInfo

SOURCES = ("pydoc_text",)
VOCAB = 256
EVAL_FRACTION = 0.1


@functools.cache
def corpus_bytes(name: str = "pydoc_text") -> np.ndarray:
    """The whole corpus as uint8 byte values."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return np.frombuffer(text.encode("utf-8"), np.uint8)


def windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping ``(n, seq_len + 1)`` windows (the remainder is dropped)."""
    n = len(tokens) // (seq_len + 1)
    return tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)


class WindowSource:
    """Random-access ``{"image": int32[T], "label": int32[T]}`` records (inputs, next-token targets)."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows.astype(np.int32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row = self.rows[index]
        return {"image": row[:-1], "label": row[1:]}


@dataclasses.dataclass
class TextPipeline:
    """Train/eval text datasets with the interface the training loop uses."""

    info: SourceInfo
    image_shape: tuple[int]
    train: grain.MapDataset
    eval: grain.MapDataset
    batch_size: int
    eval_batch_size: int
    num_threads: int
    mean: None = None
    std: None = None

    def train_iterator(self, state: dict[str, Any] | None = None) -> grain.DatasetIterator:
        """A train iterator, positioned at ``state`` when given."""
        options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=2)
        iterator = iter(self.train.to_iter_dataset(options))
        if state is not None:
            iterator.set_state(state)
        return iterator

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass over the eval windows in fixed-size batches; ``mask`` marks the real rows."""
        for batch in self.eval:
            n = len(batch["label"])
            pad = self.eval_batch_size - n
            yield {
                "image": np.pad(batch["image"], [(0, pad), (0, 0)]),
                "label": np.pad(batch["label"], [(0, pad), (0, 0)]),
                "mask": np.arange(self.eval_batch_size) < n,
            }


def build(config: ml_collections.ConfigDict) -> TextPipeline:
    """The pipeline for a text ``config.data.name`` (``config.data.seq_len`` tokens per example)."""
    seq_len = int(config.data.get("seq_len", 64))
    tokens = corpus_bytes(config.data.name)
    cut = int(len(tokens) * (1 - EVAL_FRACTION))
    train_rows, eval_rows = windows(tokens[:cut], seq_len), windows(tokens[cut:], seq_len)
    if config.data.max_eval_examples:
        eval_rows = eval_rows[: int(config.data.max_eval_examples)]
    info = SourceInfo(config.data.name, VOCAB, (seq_len, None, 1), len(train_rows), len(eval_rows))
    seed = int(config.seed) % 2**32
    train = grain.MapDataset.source(WindowSource(train_rows)).shuffle(seed=seed).repeat(None)
    eval_batch_size = int(config.eval_batch_size or config.batch_size)
    return TextPipeline(
        info=info,
        image_shape=(seq_len,),
        train=train.batch(int(config.batch_size), drop_remainder=True),
        eval=grain.MapDataset.source(WindowSource(eval_rows)).batch(eval_batch_size),
        batch_size=int(config.batch_size),
        eval_batch_size=eval_batch_size,
        num_threads=int(config.data.num_threads),
    )


def lm_metrics(workdir: str, eval_loss: float, params: Any) -> dict[str, float]:
    """Eval perplexity, and the average nonzero parameter count over training (``metrics.jsonl``).

    A logged step's nonzeros are all parameters minus the zeros its ``sparsity`` (over the ``ndim >= 2``
    weights) implies; the average is step-weighted (``sj.metrics.average_param_count``).
    """
    import jax

    import sparsejax as sj

    leaves = jax.tree.leaves(params)
    total = sum(int(np.size(x)) for x in leaves)
    weights = sum(int(np.size(x)) for x in leaves if np.ndim(x) >= 2)
    steps, nonzeros = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row.get("split") == "train":
                steps.append(int(row["step"]))
                nonzeros.append(total - weights * float(row["sparsity"]))
    if steps and steps[0] > 0:  # step 0 has the first logged row's count (true until masks move)
        steps, nonzeros = [0, *steps], [nonzeros[0], *nonzeros]
    return {
        "eval_perplexity": math.exp(eval_loss),
        "avg_param_count": sj.metrics.average_param_count(nonzeros, steps),
        "param_count": float(total),
    }

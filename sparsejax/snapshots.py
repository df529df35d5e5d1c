"""Mask snapshots on disk: one bit-packed ``.npz`` per snapshot, keyed by leaf path.

A 90%-sparse ResNet-50's masks take ~3 MB this way (1 bit per sparsified weight), so a run can keep one
per mask update for notebooks. Writes go to a temporary file renamed into place, so a killed run never
leaves a half-written snapshot.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from sparsejax import masks as mk
from sparsejax.selection import path_str

PyTree = Any


def save_masks(path: str | os.PathLike, masks: PyTree, **extra: Any) -> None:
    """Writes the sparsified leaves of ``masks`` bit-packed to ``path`` (``.npz``), atomically.

    ``extra`` scalars (e.g. ``step=1200``) are stored alongside.
    """
    arrays = {}
    for p, m in jax.tree_util.tree_flatten_with_path(masks, is_leaf=mk.is_dense)[0]:
        if mk.is_dense(m):
            continue
        m = np.asarray(m, dtype=bool)
        name = path_str(p)
        arrays[f"bits:{name}"] = np.packbits(m, axis=-1)
        arrays[f"shape:{name}"] = np.asarray(m.shape, dtype=np.int64)
    for k, v in extra.items():
        arrays[f"extra:{k}"] = np.asarray(v)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_masks(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a snapshot: ``{"masks": {leaf path: bool array}, **extra}``."""
    with np.load(os.fspath(path)) as data:
        out: dict[str, Any] = {"masks": {}}
        for key in data.files:
            kind, name = key.split(":", 1)
            if kind == "bits":
                shape = tuple(data[f"shape:{name}"])
                out["masks"][name] = np.unpackbits(data[key], axis=-1, count=shape[-1]).astype(bool)
            elif kind == "extra":
                out[name] = data[key].item() if data[key].ndim == 0 else data[key]
    return out

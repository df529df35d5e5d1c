"""The autotune cache: tuned choices per problem and device, as JSON, and the lookup ``auto`` does.

``kernels_pallas.autotune`` writes entries (it times the candidates); ``dispatch`` reads them at trace
time. Kept apart from the tuner so that reading the cache needs none of the ops it times.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

ENV_VAR = "SPARSEJAX_AUTOTUNE_CACHE"
_MEMORY: dict[str, tuple[float, dict]] = {}


def cache_path(path: str | os.PathLike | None = None) -> Path:
    """The cache file: ``path``, else $SPARSEJAX_AUTOTUNE_CACHE, else ~/.cache/sparsejax/..."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "sparsejax" / "block_sparse_autotune.json"


def device_kind() -> str:
    """The default device's kind, e.g. "cpu", "TPU v5 lite", "NVIDIA H100 80GB HBM3"."""
    return jax.devices()[0].device_kind


def make_key(m: int, shape, block_shape, nnz: int, dtype: Any, device: str | None = None) -> str:
    """Cache key: device kind, dtype, problem shape, block shape and block density."""
    kb, nb = shape[0] // block_shape[0], shape[1] // block_shape[1]
    density = nnz / (kb * nb)
    return (
        f"{device or device_kind()}|{jnp.dtype(dtype).name}|{m}x{shape[0]}x{shape[1]}|"
        f"b{block_shape[0]}x{block_shape[1]}|d{density:.4f}"
    )


def _load(path: Path) -> dict:
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return {}
    cached = _MEMORY.get(str(path))
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        table = {}  # a corrupt cache only loses tuning, never breaks a run
    _MEMORY[str(path)] = (mtime, table)
    return table


def lookup(m: int, shape, block_shape, nnz: int, dtype: Any, path=None) -> dict | None:
    """The tuned entry for this problem on this device, or None."""
    return _load(cache_path(path)).get(make_key(m, shape, block_shape, nnz, dtype))


def clear_memory_cache() -> None:
    """Forget the in-memory copies of cache files (they are re-read when their mtime changes anyway)."""
    _MEMORY.clear()


def _store(path: Path, key: str, entry: dict) -> None:
    table = dict(_load(path))
    table[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: concurrent readers see the old or the new table
    _MEMORY.pop(str(path), None)

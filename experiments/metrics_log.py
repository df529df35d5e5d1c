"""Run logging: ``workdir/metrics.jsonl`` (one JSON object a line) mirrored to Weights & Biases.

Rows carry ``step`` (optimizer updates completed), ``split`` (``train``/``eval``) and the metrics. On resume
from step ``s`` every row with ``step > s`` is dropped first, so a restarted run never duplicates rows.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import sparsejax as sj

METRICS_FILE = "metrics.jsonl"


def _nonzeros(masks: list[Any]) -> list[int]:
    """Nonzero count of each mask, counted where the mask lives (sharded masks, other processes' devices
    included: then every process must call this, as the training loop does)."""
    if not masks:
        return []
    if all(getattr(m, "is_fully_addressable", True) for m in masks):
        return [int(np.count_nonzero(m)) for m in jax.device_get(masks)]
    return [int(c) for c in jax.device_get(_count_nonzero(masks))]


@jax.jit
def _count_nonzero(masks: list[Any]) -> list[jax.Array]:
    return [jnp.count_nonzero(m) for m in masks]


def network_sparsity(params: Any, masks: Any) -> tuple[float, dict[str, float]]:
    """Sparsity over all weight matrices/kernels (``ndim >= 2``) and per sparsified leaf.

    Leaves an algorithm keeps dense (ERK overflow, overrides, dense-first/last) count as dense in the total,
    so the total is the network's sparsity, which is what the configured target refers to.
    """
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_masks = jax.tree.leaves(masks, is_leaf=sj.is_dense)
    counted = [
        (path, m)
        for (path, p), m in zip(flat_params, flat_masks, strict=True)
        if np.ndim(p) >= 2 and not sj.is_dense(m)
    ]
    nonzeros = _nonzeros([m for _, m in counted])
    size = sum(int(np.size(p)) for _, p in flat_params if np.ndim(p) >= 2)
    per_leaf, zeros = {}, 0
    for (path, m), nnz in zip(counted, nonzeros):
        leaf_zeros = int(np.size(m)) - nnz
        zeros += leaf_zeros
        per_leaf["/".join(str(getattr(k, "key", k)) for k in path)] = leaf_zeros / max(
            int(np.size(m)), 1
        )
    return zeros / max(size, 1), per_leaf


def _truncate(path: str, last_step: int) -> set[tuple[int, str]]:
    """Keep only rows with ``step <= last_step`` (atomically: rewrite then rename); their (step, split)s."""
    if not os.path.exists(path):
        return set()
    kept, keys = [], set()
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill mid-write
                continue
            if row.get("step", 0) <= last_step:
                kept.append(json.dumps(row) + "\n")
                keys.add((row.get("step"), row.get("split")))
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return keys


def _to_json(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).item()
    return value


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` and, unless ``config.wandb.mode == "disabled"``, to W&B."""

    def __init__(
        self, workdir: str, config: ml_collections.ConfigDict, start_step: int, enabled: bool = True
    ):
        # In a multi-process run only process 0 writes; the others keep just the bookkeeping.
        self.path = os.path.join(workdir, METRICS_FILE)
        self._logged = _truncate(self.path, start_step) if enabled else set()
        self._file = open(self.path, "a") if enabled else None
        self._wandb = None
        if enabled and config.wandb.mode != "disabled":
            self._wandb = _start_wandb(workdir, config)

    def has(self, step: int, split: str) -> bool:
        """Whether a row for ``(step, split)`` is already in the file (e.g. a finished run re-run)."""
        return (step, split) in self._logged

    def write(self, row: dict[str, Any], per_leaf_sparsity: dict[str, float] | None = None) -> None:
        """Log one row (must hold ``step`` and ``split``); per-leaf sparsity goes to W&B only."""
        row = {k: _to_json(v) for k, v in row.items()}
        self._logged.add((row["step"], row["split"]))
        if self._file is None:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            split = row["split"]
            payload = {f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split")}
            for leaf, s in (per_leaf_sparsity or {}).items():
                payload[f"sparsity/{leaf}"] = s
            self._wandb.log(payload, step=row["step"])

    def close(self) -> None:
        """Flush and close the file and the W&B run."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(workdir: str, config: ml_collections.ConfigDict):
    """A W&B run whose files live in the workdir; a resumed workdir continues the same run id."""
    os.environ["WANDB_DIR"] = os.path.abspath(workdir)
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    id_file = os.path.join(workdir, "wandb_run_id")
    run_id = os.environ.get("WANDB_RUN_ID")  # set by `wandb agent` for sweep runs
    if run_id is None:
        if os.path.exists(id_file):
            with open(id_file) as f:
                run_id = f.read().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            with open(id_file, "w") as f:
                f.write(run_id)
    return wandb.init(
        project=config.wandb.project,
        entity=config.wandb.entity or None,
        name=config.wandb.name or os.path.basename(os.path.abspath(workdir)),
        mode=config.wandb.mode,
        dir=os.path.abspath(workdir),
        id=run_id,
        resume="allow",
        config=config.to_dict(),
    )

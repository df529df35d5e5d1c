"""Reading a run's work directory: ``config.json``, ``metrics.jsonl``, ``summary.json``, ``masks/*.npz``.

Pure NumPy (no matplotlib), so notebooks and scripts can use it without plotting.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from sparsejax.snapshots import load_masks

_SNAPSHOT = re.compile(r"step_(\d+)\.npz$")


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _read_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a killed run
                    continue
    return rows


@dataclasses.dataclass(frozen=True)
class Run:
    """One work directory, read once; mask snapshots are loaded on demand and cached."""

    path: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    @property
    def algorithm(self) -> str:
        return str(self.config.get("sparsity", {}).get("algorithm", "dense"))

    @property
    def label(self) -> str:
        """``algorithm`` plus its distribution or N:M pattern, e.g. ``rigl erk 0.8`` or ``sr_ste 2:4``."""
        s = self.config.get("sparsity", {})
        algo = self.algorithm
        if algo in ("ste", "sr_ste", "pgf") and s.get("n") and s.get("m"):
            return f"{algo} {s['n']}:{s['m']}"
        if algo == "dense":
            return "dense"
        return f"{algo} {s.get('distribution', '')} {s.get('sparsity', '')}".replace("  ", " ")

    def split(self, split: str = "train") -> list[dict[str, Any]]:
        """Rows of one split (``train`` or ``eval``), in step order."""
        return sorted((r for r in self.rows if r.get("split") == split), key=lambda r: r["step"])

    def series(self, key: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of ``key`` over the rows of ``split`` that carry it."""
        rows = [r for r in self.split(split) if r.get(key) is not None]
        steps = np.asarray([r["step"] for r in rows], dtype=np.int64)
        return steps, np.asarray([r[key] for r in rows], dtype=np.float64)

    @property
    def mask_steps(self) -> list[int]:
        """Steps that have a mask snapshot, ascending."""
        files = glob.glob(os.path.join(self.path, "masks", "step_*.npz"))
        return sorted(int(m.group(1)) for f in files if (m := _SNAPSHOT.search(f)))

    def masks(self, step: int | None = None) -> dict[str, np.ndarray]:
        """``{leaf path: bool array}`` of the snapshot at ``step`` (default: the last one)."""
        steps = self.mask_steps
        if not steps:
            raise FileNotFoundError(f"{self.path}: no mask snapshots in masks/")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise KeyError(f"{self.path}: no snapshot at step {step}; have {steps}")
        return _load(os.path.join(self.path, "masks", f"step_{step:07d}.npz"))

    def mask_history(self) -> tuple[list[int], list[dict[str, np.ndarray]]]:
        """All snapshots: ``(steps, [masks per step])``."""
        steps = self.mask_steps
        return steps, [self.masks(s) for s in steps]

    def final(self, key: str, split: str = "eval") -> float | None:
        """``summary.json``'s ``{split}_{key}`` (or ``key``), else the last logged value."""
        for name in (f"{split}_{key}", key):
            if name in self.summary:
                return float(self.summary[name])
        _, values = self.series(key, split)
        return float(values[-1]) if len(values) else None


@functools.lru_cache(maxsize=256)
def _load_cached(path: str, mtime: float) -> dict[str, np.ndarray]:
    return load_masks(path)["masks"]


def _load(path: str) -> dict[str, np.ndarray]:
    return _load_cached(path, os.path.getmtime(path))


def read_workdir(path: str | os.PathLike) -> Run:
    """Reads one work directory written by ``python -m experiments.train``."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such work directory: {path}")
    return Run(
        path=path,
        config=_read_json(os.path.join(path, "config.json")),
        rows=_read_rows(os.path.join(path, "metrics.jsonl")),
        summary=_read_json(os.path.join(path, "summary.json")),
    )


def read_workdirs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Reads several work directories (e.g. a sweep's points)."""
    return [read_workdir(p) for p in paths]


def as_matrix(mask: np.ndarray) -> np.ndarray:
    """A leaf as 2-D ``(fan_in, fan_out)``: conv kernels ``(h, w, c_in, c_out)`` -> ``(h*w*c_in, c_out)``."""
    mask = np.asarray(mask)
    if mask.ndim == 1:
        return mask[None, :]
    return mask.reshape(-1, mask.shape[-1])


def density(mask: np.ndarray) -> float:
    """Fraction of active positions."""
    mask = np.asarray(mask)
    return float(np.count_nonzero(mask)) / max(mask.size, 1)

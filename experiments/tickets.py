"""Lottery tickets' parts: the fixed-mask algorithm, its files, and global magnitude pruning of a round.

- ``lottery_ticket`` (:func:`ticket`, registered at import): masked-dense training with fixed masks read
  from ``sparsity.masks_file`` (an ``sj.save_masks`` snapshot). With ``record_rewind=True`` (a lottery's
  dense round 0) the algorithm state holds a copy of the params, taken at initialisation and replaced by
  the params after update ``rewind_step`` (``update_state``). It lives in the optimizer state, so every
  checkpoint carries it and a resumed run keeps it; :func:`rewind_point` reads it back.
- Files: :func:`final_state` reads a run's checkpoint without building the model, :func:`flatten` turns
  a pytree into leaf path -> array, :func:`save_arrays` / :func:`load_arrays` store such mappings.
- Pruning: :func:`prune_round` keeps the :func:`keep_count` weights of largest final ``|w|`` among the
  previous round's survivors (:func:`prune`: one global threshold, exact count); :func:`rewound` is the
  next round's initial params.

``experiments.lottery`` runs the rounds; this module does not know about them (nor imports it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import sparsejax as sj
from experiments import checkpointing
from experiments.errors import ConfigError
from sparsejax.algorithms.drop_grow import prune_global
from sparsejax.selection import leaf_paths, map_named, path_str

NAME = "lottery_ticket"

Flat = dict[str, np.ndarray]  # leaf path (``sparsejax.selection.path_str``) -> array


# ----------------------------------------------------------------------------- the fixed-mask algorithm
def ticket(
    masks_file: str = "", rewind_step: int = 0, record_rewind: bool = False, seed: int = 0
) -> sj.SparseAlgorithm:
    """Masked-dense training with fixed masks read from ``masks_file`` (an ``sj.save_masks`` snapshot
    keyed by leaf path; leaves it does not name stay dense; ``""``: all dense).

    ``record_rewind``: keep a copy of the params in the algorithm state, ``{"rewind": params}``: the
    initial ones, replaced by the params after ``rewind_step`` updates (the lottery rewind point).
    """

    def init_masks(params, key):
        loaded = load_ticket(masks_file) if masks_file else {}
        missing = sorted(set(loaded) - set(leaf_paths(params)))
        if missing:
            raise ValueError(f"masks_file={masks_file!r}: the model has no leaf {missing[0]!r}")

        def one(name, w):
            if name not in loaded:
                return sj.DENSE
            if loaded[name].shape != w.shape:
                raise ValueError(
                    f"masks_file={masks_file!r}: leaf {name!r} has shape {loaded[name].shape}, "
                    f"the model's is {tuple(w.shape)}"
                )
            return jnp.asarray(loaded[name])

        return map_named(one, params)

    init_state = update_state = None
    if record_rewind:

        def init_state(params, masks, key):
            return {"rewind": jax.tree.map(jnp.copy, params)}

        if rewind_step > 0:

            def update_state(algo_state, algo_grads, new_params, masks, step):
                take = step == rewind_step  # ``step`` counts the updates done, this one included
                keep = lambda old, new: jnp.where(take, new, old)  # noqa: E731
                return {"rewind": jax.tree.map(keep, algo_state["rewind"], new_params)}

    return sj.SparseAlgorithm(
        name=NAME,
        init_masks=init_masks,
        init_state=init_state,
        update_state=update_state,
        seed=seed,
    )


def load_ticket(path: str) -> Flat:
    """The masks of an ``sj.save_masks`` snapshot at ``path`` (ValueError if there is none)."""
    if not os.path.isfile(path):
        raise ValueError(f"masks_file={path!r}: no such file")
    return sj.load_masks(path)["masks"]


# Registered at import: configs/lottery.py imports this module before building the base config, so the
# algorithm's keys exist in config.sparsity.
sj.register_algorithm(NAME, ticket)


# ----------------------------------------------------------------------------- files
def flatten(tree: Any) -> Flat:
    """Leaf path -> numpy array."""
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def final_state(round_dir: str, step: int) -> dict[str, Any]:
    """The train state saved at ``step`` in ``round_dir/checkpoints``, as orbax stores it (nested dicts
    and lists of arrays, ``opt_state`` included), read without building the model."""
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(round_dir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(create=False),
        item_names=checkpointing.ITEMS,
    )
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return restored["state"]


def _find_key(tree: Any, key: str) -> Any:
    """The first value under dict key ``key`` anywhere in a restored tree (depth first)."""
    if isinstance(tree, Mapping):
        if key in tree:
            return tree[key]
        children = tree.values()
    elif isinstance(tree, (list, tuple)):
        children = tree
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


def rewind_point(round_dir: str, step: int) -> Flat:
    """The params copy that ``record_rewind`` kept, from the checkpoint at ``step`` in ``round_dir``
    (ConfigError if it holds none)."""
    rewind = _find_key(final_state(round_dir, step).get("opt_state"), "rewind")
    if rewind is None:
        raise ConfigError(
            f"{round_dir}: its checkpoint holds no rewind copy (not a lottery round 0)"
        )
    return flatten(rewind)


def save_arrays(path: str, arrays: Flat, **extra: Any) -> None:
    """``arrays`` (and ``extra`` scalars) to ``path`` (.npz), atomically (temporary file, rename)."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    named = {f"array:{k}": v for k, v in arrays.items()}
    np.savez(tmp, **named, **{f"extra:{k}": np.asarray(v) for k, v in extra.items()})
    os.replace(tmp, path)


def load_arrays(path: str) -> Flat:
    """The arrays :func:`save_arrays` wrote (without the extras)."""
    with np.load(path) as data:
        return {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("array:")}


# ----------------------------------------------------------------------------- pruning
def prunable(params: Flat, keep_dense: str = "") -> list[str]:
    """Leaves pruned: ``ndim >= 2`` (sparsejax's default selection), minus those ``keep_dense`` (a regex
    searched in the leaf path) names."""
    pattern = re.compile(keep_dense) if keep_dense else None
    return [n for n, w in params.items() if w.ndim >= 2 and not (pattern and pattern.search(n))]


def keep_count(total: int, fraction: float, r: int) -> int:
    """Weights kept in round ``r``: ``round(total * (1 - fraction)^r)``."""
    return int(round(total * (1.0 - float(fraction)) ** r))


def prune(masks: Flat, weights: Flat, keep: int, seed: int) -> Flat:
    """The ``keep`` actives of ``masks`` with the largest ``|weights|``, one threshold over all leaves
    (exact count, no sort; ties broken by a PRNG key from ``seed``)."""
    names = sorted(masks)
    new = jax.jit(prune_global)(
        {n: jnp.asarray(masks[n]) for n in names},
        {n: jnp.asarray(weights[n]) for n in names},
        jnp.int32(keep),
        jax.random.PRNGKey(seed),
    )
    return {n: np.asarray(m, dtype=bool) for n, m in new.items()}


def prune_round(
    before_dir: str,
    step: int,
    masks: Flat | None,
    r: int,
    fraction: float,
    keep_dense: str,
    seed: int,
) -> tuple[Flat, int, int]:
    """Round ``r``'s mask from round ``r - 1`` (its run in ``before_dir``, finished at ``step``; ``masks``
    its mask, ``None`` for the dense round 0: every :func:`prunable` weight): the
    ``keep_count(total, fraction, r)`` survivors of largest final ``|w|``. Returns (mask, keep, total)."""
    weights = flatten(final_state(before_dir, step)["params"])
    if masks is None:
        masks = {n: np.ones(weights[n].shape, bool) for n in prunable(weights, keep_dense)}
    total = sum(m.size for m in masks.values())
    keep = keep_count(total, fraction, r)
    return prune(masks, weights, keep, seed), keep, total


def rewound(rewind: Flat, masks: Flat) -> Flat:
    """Round ``r``'s initial params: ``rewind * mask`` on pruned leaves, ``rewind`` elsewhere."""
    return {
        n: np.where(masks[n], w, np.zeros_like(w)) if n in masks else w for n, w in rewind.items()
    }

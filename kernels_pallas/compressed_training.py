"""Block static / SET / RigL trained in compressed form: params are the stored blocks, the topology
is the algorithm's state.

``compressed_algorithm(sj.rigl, dense_like, sparsity=0.9, block_size=(128, 128), ...)`` is the block
algorithm ``sj.rigl(...)`` for a model whose block-sparse layers are ``CompressedBlockDense`` (param
``kernel`` of shape (nnz, bk, bn)). ``dense_like`` is the params tree of the same model in masked-dense
form (shapes suffice, e.g. ``jax.eval_shape`` of its init): the same key paths, each compressed leaf at
its dense (K, N) shape. One mechanism covers the three algorithms:

- The initial topology is the masked-dense algorithm's initial block mask (same key, same layout).
- On an update step the same drop/grow runs on the (KB, NB) grid: the algorithm built with one unit
  per block (``block_size=None``) ranks the squared L2 block norms the block-granular one ranks by
  (of the stored blocks to drop; of the dense gradient to grow, which arrives as the gradient of the
  layers' probe, computed in that step's backward pass only). Freed slots take the grown blocks
  (``topology.move``): they are the update's ``grown``, so ``sparsify`` zeroes them and resets their
  optimizer state. The masks of compressed leaves are all True (every stored value is live).
- The forward hook gives each compressed layer its ``CompressedWeight``; a normal step never builds
  anything the size of a dense kernel.

``masked_dense`` / ``from_masked_dense`` convert to and from the ordinary masked-dense form.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kernels_pallas import topology
from kernels_pallas.compressed import CompressedWeight
from sparsejax import masks as mk
from sparsejax.core import MaskUpdate, SparseAlgorithm
from sparsejax.layout import LAYOUT_KEYS, Layout
from sparsejax.selection import leaf_paths
from sparsejax.state import sparse_state

PyTree = Any
Array = jax.Array

# Constructors whose masks keep a constant number of blocks per layer (slots never change count).
CONSTANT_COUNT = ("static", "set", "rigl")


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Static: the dense (K, N) shape of each params leaf that is compressed (None elsewhere)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, int] | None, ...]
    block_shape: tuple[int, int]


class CompressedState(NamedTuple):
    """The algorithm state of compressed training (``SparseState.algo_state``)."""

    positions: PyTree  # (nnz,) int32 block position of each slot, per compressed leaf; DENSE else
    probe: PyTree  # (KB, NB) f32 zeros whose gradient is the grow score; () if nothing is grown
    ever_active: PyTree  # (KB, NB) bool, blocks active at least once (ITOP)
    sad: Array  # int32 elements whose activity changed in the latest update
    layout: BlockLayout


def _flat(tree: PyTree) -> list:
    return jax.tree.leaves(tree, is_leaf=mk.is_dense)


def compressed_algorithm(
    constructor: Callable[..., SparseAlgorithm], dense_like: PyTree, **kwargs: Any
) -> SparseAlgorithm:
    """``constructor(**kwargs)`` (``sj.static``, ``sj.set_sparse`` or ``sj.rigl`` with ``block_size``)
    trained on compressed layers; ``dense_like``: the model's params in masked-dense form (shapes).

    Masks, drops and growths equal the masked-dense algorithm's (to float ties). RigL's grow scores
    are the gradient of the probe in ``algo_state``: train with ``sj.value_and_grad`` and pass
    ``algo_grads`` to ``tx.update`` (``experiments.train`` does).
    """
    if kwargs.get("block_size") is None:
        raise ValueError(
            "block_size=None: compressed training moves whole blocks; allowed: the layers' (bk, bn)"
        )
    if kwargs.get("init", "random") != "random":
        raise ValueError(
            f"init={kwargs['init']!r}: compressed layers start at random; allowed: random"
        )
    block = tuple(int(b) for b in kwargs["block_size"])
    dense_algo = constructor(**kwargs)
    if dense_algo.name not in CONSTANT_COUNT:
        raise ValueError(
            f"algorithm={dense_algo.name!r}: compressed layers keep a constant block count; "
            f"allowed: {', '.join(CONSTANT_COUNT)}"
        )
    unit_algo = None
    if dense_algo.update_masks is not None:
        unit_algo = constructor(**{**kwargs, "block_size": None})
    sparsity = kwargs.get("sparsity", inspect.signature(constructor).parameters["sparsity"].default)
    layout_args = {k: v for k, v in kwargs.items() if k in LAYOUT_KEYS and k != "sparsity"}
    per_leaf = Layout(sparsity=sparsity, **layout_args).per_leaf(dense_like)

    def describe(params: PyTree) -> BlockLayout:
        names, p_leaves = leaf_paths(params), jax.tree.leaves(params)
        if names != leaf_paths(dense_like):  # by name: NNX states box their leaves, dicts do not
            raise ValueError("dense_like: not the params tree of this model in masked-dense form")
        shapes = []
        for name, p, d in zip(names, p_leaves, jax.tree.leaves(dense_like), strict=True):
            compressed = tuple(p.shape) != tuple(d.shape)
            if compressed != (name in per_leaf):
                what = (
                    "is compressed but kept dense"
                    if compressed
                    else "is sparsified, not compressed"
                )
                raise ValueError(
                    f"overrides: leaf {name} {what}; allowed: sparsify exactly the compressed "
                    "layers (overrides=0.0, dense_first/dense_last for the others)"
                )
            if compressed:
                grid = topology.grid_of(tuple(d.shape), block)
                nnz = mk.active_units(tuple(d.shape), per_leaf[name], block)
                if tuple(p.shape) != (nnz, *block):
                    raise ValueError(
                        f"sparsity={per_leaf[name]:g} keeps {nnz} of the {grid[0] * grid[1]} "
                        f"blocks of leaf {name}, whose layer stores {tuple(p.shape)}; allowed: "
                        "the layer's density = 1 - sparsity, block_size = its blocks"
                    )
            shapes.append(tuple(d.shape) if compressed else None)
        return BlockLayout(tuple(names), tuple(shapes), block)

    def init_masks(params: PyTree, key: Array) -> tuple[PyTree, CompressedState]:
        layout = describe(params)
        dense_masks = _flat(dense_algo.init_masks(dense_like, key))
        leaves = []  # per params leaf: (slot mask, positions, ever-active blocks, probe)
        for p, m, shape in zip(jax.tree.leaves(params), dense_masks, layout.shapes, strict=True):
            if shape is None:
                leaves.append((mk.DENSE,) * 4)
                continue
            units = mk.to_blocks(m, block, "any")
            positions = topology.positions_of(units, p.shape[0])
            leaves.append((jnp.ones(p.shape, bool), positions, units, jnp.zeros(units.shape)))
        treedef = jax.tree.structure(params)
        masks, positions, ever, probe = (treedef.unflatten(list(t)) for t in zip(*leaves))
        state = CompressedState(
            positions=positions,
            probe=probe if unit_algo is not None else (),
            ever_active=ever,
            sad=jnp.zeros((), jnp.int32),
            layout=layout,
        )
        return masks, state

    def update_masks(masks, params, grads, step, key, *, algo_state, algo_grads) -> MaskUpdate:
        if algo_grads is None:
            raise ValueError(
                "algo_grads=None: compressed training grows by the gradient of its probe; pass "
                "algo_grads from sj.value_and_grad to tx.update"
            )
        cs, treedef = algo_state, jax.tree.structure(params)
        pos, p_leaves = _flat(cs.positions), jax.tree.leaves(params)
        scores = _flat(algo_grads.probe)
        units, drop, grow = [], [], []
        for i, p in enumerate(p_leaves):
            grid = _grid(cs.layout, i)
            if grid is None:  # not compressed: stays dense (drop/grow never read these)
                units.append(mk.DENSE), drop.append(p), grow.append(p)
                continue
            units.append(topology.block_mask(pos[i], grid))
            drop.append(topology.slot_scores(p, pos[i], grid))
            grow.append(scores[i])
        unit_masks = treedef.unflatten(units)
        upd = unit_algo.update_masks(
            unit_masks, treedef.unflatten(drop), treedef.unflatten(grow), step, key
        )
        new_units, grown_units = _flat(upd.masks), _flat(upd.grown)
        new_pos, grown_slots, ever, sad = [], [], _flat(cs.ever_active), jnp.zeros((), jnp.int32)
        for i, p in enumerate(p_leaves):
            if mk.is_dense(units[i]):
                new_pos.append(mk.DENSE), grown_slots.append(mk.DENSE)
                continue
            kept = new_units[i] & ~grown_units[i]
            moved, freed = topology.move(pos[i], kept, grown_units[i])
            new_pos.append(moved)
            grown_slots.append(jnp.broadcast_to(freed[:, None, None], p.shape))
            ever[i] = ever[i] | new_units[i]
            sad = sad + jnp.sum(units[i] != new_units[i], dtype=jnp.int32) * (block[0] * block[1])
        new_state = cs._replace(
            positions=treedef.unflatten(new_pos), ever_active=treedef.unflatten(ever), sad=sad
        )
        return MaskUpdate(masks, treedef.unflatten(grown_slots), new_state)

    def forward(params: PyTree, state: Any) -> PyTree:
        cs = state.algo_state
        scoring = None if unit_algo is None else jnp.asarray(dense_algo.is_update_step(state.step))
        probes = _flat(cs.probe) if unit_algo is not None else None
        out = []
        for i, (p, ps) in enumerate(zip(jax.tree.leaves(params), _flat(cs.positions), strict=True)):
            shape = cs.layout.shapes[i]
            if shape is None:
                out.append(p)
                continue
            probe = None if probes is None else probes[i]
            out.append(CompressedWeight(p, ps, probe, None if probe is None else scoring, shape))
        return jax.tree.structure(params).unflatten(out)

    return SparseAlgorithm(
        name=dense_algo.name,
        init_masks=init_masks,
        update_masks=None if unit_algo is None else update_masks,
        is_update_step=dense_algo.is_update_step,
        forward=forward,
        topology_in_state=True,
        seed=dense_algo.seed,
    )


def _grid(layout: BlockLayout, i: int) -> tuple[int, int] | None:
    shape = layout.shapes[i]
    return None if shape is None else topology.grid_of(shape, layout.block_shape)


def compressed_state(opt_state: Any) -> CompressedState | None:
    """The :class:`CompressedState` of an optimizer state, or None (not compressed training)."""
    own = sparse_state(opt_state).algo_state
    return own if isinstance(own, CompressedState) else None


def masked_dense(params: PyTree, opt_state: Any) -> tuple[PyTree, PyTree]:
    """``(params, masks)`` of the same network in masked-dense form: each compressed leaf becomes its
    (K, N) kernel (zero outside the stored blocks) with its element mask; other leaves as they are
    (their masks as ``sj.masks_of``)."""
    cs = compressed_state(opt_state)
    masks = _flat(sparse_state(opt_state).masks)
    out_p, out_m = [], []
    for i, (p, ps) in enumerate(zip(jax.tree.leaves(params), _flat(cs.positions), strict=True)):
        shape = cs.layout.shapes[i]
        if shape is None:
            out_p.append(p), out_m.append(masks[i])
            continue
        kernel, mask = topology.to_masked_dense(p, ps, shape)
        out_p.append(kernel), out_m.append(mask)
    treedef = jax.tree.structure(params)
    return treedef.unflatten(out_p), treedef.unflatten(out_m)


def from_masked_dense(
    params: PyTree, masks: PyTree, block_size: tuple[int, int]
) -> tuple[PyTree, PyTree]:
    """``(params, positions)``: the compressed form of masked-dense ``params`` whose sparsified
    leaves have block masks; every sparsified leaf is compressed (slots in CSR order)."""
    out_p, out_pos = [], []
    for p, m in zip(jax.tree.leaves(params), _flat(masks), strict=True):
        if mk.is_dense(m):
            out_p.append(p), out_pos.append(mk.DENSE)
            continue
        data, positions = topology.from_masked_dense(p, m, tuple(block_size))
        out_p.append(data), out_pos.append(positions)
    treedef = jax.tree.structure(params)
    return treedef.unflatten(out_p), treedef.unflatten(out_pos)


def stats(opt_state: Any) -> dict[str, Array]:
    """int32 ``dropped``, ``grown``, ``sad`` of the latest update, counted in elements of the
    dense-equivalent kernels (what the masked-dense run reports)."""
    counts = sparse_state(opt_state).stats
    return {**counts, "sad": compressed_state(opt_state).sad}


def itop(opt_state: Any) -> Array:
    """In-time over-parameterisation rate: the fraction of the compressed kernels' weights (of their
    dense-equivalent shapes) that have been active at least once."""
    ever = mk.sparse_leaves(compressed_state(opt_state).ever_active)
    units = sum(int(e.size) for e in ever)
    return sum(jnp.sum(e, dtype=jnp.int32) for e in ever) / max(units, 1)

"""Compressed N:M export: values plus per-group indices, back to dense, and a matmul on the compressed form.

A weight that is N:M-sparse along ``axis`` (the input / contraction axis, ``-2`` for Flax Dense ``(in, out)``
and Conv ``(h, w, c_in, c_out)`` kernels) is stored as :class:`NMCompressed`:

- ``values``: the grouped axis moved last, then the ``n`` kept values of every group of ``m``, in ascending
  position order: shape ``(*other_axes, L * n // m)``. For a Dense kernel that is ``(out, in * n // m)``, the
  row-major sparse operand ``W^T`` of ``y^T = W^T x^T``, i.e. what NVIDIA sparse tensor cores multiply.
- ``indices``: the in-group position (``0..m-1``) of every kept value as a ``ceil(log2 m)``-bit field, packed
  little-endian (first index in the lowest bits) into ``uint8`` along the last axis. For 2:4 that is the
  tensor-core metadata: two 2-bit indices per group (a 4-bit nibble), two groups per byte. Hardware
  libraries (cuSPARSELt, CUTLASS) additionally interleave this metadata for their tiles; that reordering
  is a device-specific permutation of the same bits and is not applied here.

Every function is pure and jittable; :class:`NMCompressed` is a pytree (arrays are children, ``n, m, axis,
shape`` static), so compressed params go through ``jax.jit``, ``jax.device_put`` and checkpointers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as mk
from sparsejax.selection import path_str

PyTree = Any
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class NMCompressed:
    """One N:M-sparse leaf in compressed form (see the module docstring for the layout)."""

    values: Array  # (*other_axes, L * n // m), the leaf's dtype
    indices: Array  # uint8 (*other_axes, ceil(L * n // m * bits / 8)), packed in-group positions
    n: int
    m: int
    axis: int  # grouped axis of the dense leaf, non-negative
    shape: tuple[int, ...]  # dense shape

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed form (values plus packed indices)."""
        return _nbytes(self.values) + _nbytes(self.indices)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same leaf stored dense."""
        return math.prod(self.shape) * np.dtype(self.values.dtype).itemsize


jax.tree_util.register_dataclass(
    NMCompressed, data_fields=["values", "indices"], meta_fields=["n", "m", "axis", "shape"]
)


def is_compressed(x: Any) -> bool:
    """True for an :class:`NMCompressed` leaf (use as ``is_leaf`` when mapping over compressed trees)."""
    return isinstance(x, NMCompressed)


def index_bits(m: int) -> int:
    """Bits per in-group index: ``ceil(log2 m)`` (2 for 2:4, 3 for 1:8)."""
    return max(1, math.ceil(math.log2(m)))


def _nbytes(x: Any) -> int:
    return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def _pack(idx: Array, bits: int) -> Array:
    """``(..., k)`` ints below ``2**bits`` -> ``(..., ceil(k * bits / 8))`` uint8, little-endian fields."""
    fields = (idx[..., None] >> jnp.arange(bits)) & 1
    flat = fields.reshape(*idx.shape[:-1], -1).astype(jnp.uint8)
    return jnp.packbits(flat, axis=-1, bitorder="little")


def _unpack(packed: Array, count: int, bits: int) -> Array:
    """Inverse of :func:`_pack`: the first ``count`` fields as int32."""
    flat = jnp.unpackbits(packed, axis=-1, count=count * bits, bitorder="little")
    fields = flat.reshape(*packed.shape[:-1], count, bits).astype(jnp.int32)
    return jnp.sum(fields << jnp.arange(bits), axis=-1)


def compress(
    w: Array, n: int, m: int, axis: int = -2, mask: Array | None = None, name: str = "array"
) -> NMCompressed:
    """Compresses ``w * mask`` (``mask`` defaults to the N:M magnitude mask of ``w`` along ``axis``).

    Raises ``ValueError`` if a concrete ``mask`` has more than ``n`` actives in some group (that would
    lose weights); groups with fewer actives are padded with explicit zeros.
    """
    axis = axis % w.ndim
    if not 0 < n < m or w.shape[axis] % m:
        raise ValueError(
            f"nm_export: {name} {tuple(w.shape)}: need 0 < n={n} < m={m}, m | axis {axis}"
        )
    if mask is None:
        mask = mk.nm_mask(w, n, m, axis, name)
    elif not isinstance(mask, jax.core.Tracer):
        counts = np.moveaxis(np.asarray(mask), axis, -1).reshape(-1, m).sum(-1)
        if counts.max(initial=0) > n:
            raise ValueError(
                f"nm_export: mask of {name} {tuple(w.shape)} is not {n}:{m} on axis {axis}"
            )
    length = w.shape[axis]
    rest = tuple(s for i, s in enumerate(w.shape) if i != axis)
    groups = jnp.moveaxis(jnp.where(mask, w, jnp.zeros_like(w)), axis, -1)
    groups = groups.reshape(*rest, length // m, m)
    active = jnp.moveaxis(mask, axis, -1).reshape(groups.shape)
    # Active positions score m - j (lower position = higher score): top-n picks the actives, in order.
    score = jnp.where(active, m - jnp.arange(m, dtype=jnp.int32), 0)
    idx = jnp.sort(jax.lax.top_k(score, n)[1], axis=-1)
    values = jnp.take_along_axis(groups, idx, axis=-1).reshape(*rest, length // m * n)
    packed = _pack(idx.reshape(*rest, -1), index_bits(m))
    return NMCompressed(values, packed, n, m, axis, tuple(w.shape))


def group_indices(c: NMCompressed) -> Array:
    """In-group positions of the kept values, int32 ``(*other_axes, groups, n)``."""
    count = c.values.shape[-1]
    idx = _unpack(c.indices, count, index_bits(c.m))
    return idx.reshape(*c.values.shape[:-1], count // c.n, c.n)


def decompress(c: NMCompressed) -> Array:
    """The dense leaf (zeros at pruned positions), bit-identical to the masked weights it came from."""
    idx = group_indices(c)
    vals = c.values.reshape(idx.shape)
    hit = idx[..., None] == jnp.arange(c.m)  # (..., groups, n, m); one hit per kept value
    groups = jnp.sum(jnp.where(hit, vals[..., None], jnp.zeros((), vals.dtype)), axis=-2)
    dense = groups.reshape(*groups.shape[:-2], -1)
    return jnp.moveaxis(dense, -1, c.axis)


def compress_params(
    params: PyTree, n: int, m: int, masks: PyTree | None = None, axis: int = -2
) -> PyTree:
    """Replaces every N:M-sparsified leaf of ``params`` by :class:`NMCompressed`.

    Args:
      params: params pytree (e.g. the trained dense weights, or ``sj.forward_params(params, state)``).
      n, m: the N:M pattern.
      masks: the mask pytree (``sj.masks_of(state)``): leaves with a bool mask are compressed as
        ``w * mask``, ``DENSE`` leaves are kept as they are. Without masks, every leaf with ``ndim >= 2``
        whose grouped axis ``m`` divides is projected to its N:M magnitude mask and compressed.
      axis: the grouped axis (the algorithm's ``axis``, ``-2`` by default).
    """
    if masks is None:

        def auto(path: tuple, w: Array) -> Any:
            if jnp.ndim(w) < 2 or w.shape[axis] % m:
                return w
            return compress(w, n, m, axis, name=path_str(path))

        return jax.tree_util.tree_map_with_path(auto, params)

    def with_mask(path: tuple, msk: Any, w: Array) -> Any:
        return w if mk.is_dense(msk) else compress(w, n, m, axis, msk, path_str(path))

    return jax.tree_util.tree_map_with_path(with_mask, masks, params, is_leaf=mk.is_dense)


def decompress_params(tree: PyTree) -> PyTree:
    """Inverse of :func:`compress_params`: dense params, usable by ``model.apply``."""
    return jax.tree.map(
        lambda x: decompress(x) if is_compressed(x) else x, tree, is_leaf=is_compressed
    )


def nm_matmul(x: Array, c: NMCompressed, batch_chunk: int = 64) -> Array:
    """``x @ W`` for a compressed 2-D kernel ``W`` ``(in, out)`` grouped along ``in`` (axis 0).

    Each output reads only the ``in * n // m`` inputs its kept weights touch (gather, then a dot over the
    compressed axis): ``n / m`` of the dense FLOPs. Rows of ``x`` are processed ``batch_chunk`` at a time
    (``lax.map``), bounding the gathered intermediate to ``batch_chunk * out * in * n // m`` elements.
    Equals ``x @ decompress(c)`` up to float summation order.
    """
    if len(c.shape) != 2 or c.axis != 0:
        raise ValueError(
            f"nm_matmul: needs a 2-D (in, out) kernel grouped on axis 0, got {c.shape} axis {c.axis}"
        )
    if x.shape[-1] != c.shape[0]:
        raise ValueError(f"nm_matmul: x {x.shape} does not contract with W {c.shape}")
    idx = group_indices(c)  # (out, groups, n)
    cols = (idx + c.m * jnp.arange(idx.shape[1])[:, None]).reshape(c.values.shape)
    rows = x.reshape(-1, x.shape[-1])

    def one(row: Array) -> Array:
        return jnp.einsum("ok,ok->o", row[cols], c.values)

    out = jax.lax.map(one, rows, batch_size=min(batch_chunk, max(rows.shape[0], 1)))
    return out.reshape(*x.shape[:-1], c.shape[1])


def nbytes_report(tree: PyTree) -> dict[str, Any]:
    """Bytes of a (partly) compressed params tree: per leaf and total, dense vs compressed.

    Returns:
      ``{"leaves": {path: {"dense", "compressed"}}, "total": {"dense", "compressed", "saved",
      "saved_fraction"}}`` (ints, except the fraction); uncompressed leaves count the same in both.
    """
    leaves = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_compressed)[0]:
        if is_compressed(x):
            leaves[path_str(path)] = {"dense": x.dense_nbytes, "compressed": x.nbytes}
        else:
            leaves[path_str(path)] = {"dense": _nbytes(x), "compressed": _nbytes(x)}
    dense = sum(v["dense"] for v in leaves.values())
    comp = sum(v["compressed"] for v in leaves.values())
    total = {
        "dense": dense,
        "compressed": comp,
        "saved": dense - comp,
        "saved_fraction": (dense - comp) / dense if dense else 0.0,
    }
    return {"leaves": leaves, "total": total}

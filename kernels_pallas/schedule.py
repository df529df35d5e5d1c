"""Flat work-item schedules for the TPU kernels, computed under jit from the format's index arrays.

A grouped product (y[:, g] = sum over the blocks of group g) becomes a 1-D list of ``nnz + G`` work
items sorted by output group, so each output block is visited in one consecutive run (Mosaic keeps the
output block in VMEM across the run and writes it back once). Every group owns at least one item: an
empty group gets a single invalid item that writes zeros, so no output block is left unvisited (the
interpreter would leave it NaN). The static length ``nnz + G`` is an upper bound; leftover items are
appended to the last group as invalid items that reuse the last real block indices, so they trigger no
new copies on hardware and change nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

VALID, FIRST, LAST = 1, 2, 4  # bit flags of a work item


class GroupedSchedule(NamedTuple):
    """Per-item tables (all int32, length nnz + G), scalar-prefetched into SMEM by the TPU kernels."""

    in_blk: jax.Array  # block index along the contracted axis of the dense operand
    data_blk: jax.Array  # index into the block data array
    out_blk: jax.Array  # output block column
    flags: jax.Array  # VALID | FIRST | LAST bits


def grouped_schedule(
    group_ptr: jax.Array, in_idx: jax.Array, data_idx: jax.Array
) -> GroupedSchedule:
    """Work items for groups ``group_ptr`` (G+1,) over positions with ``in_idx``/``data_idx`` (nnz,)."""
    nnz = in_idx.shape[0]
    num_groups = group_ptr.shape[0] - 1
    num_items = nnz + num_groups
    counts = jnp.diff(group_ptr)
    slots = jnp.maximum(counts, 1)
    # Give the spare items to the last group so every run stays consecutive.
    slots = slots.at[num_groups - 1].add(num_items - jnp.sum(slots))
    ends = jnp.cumsum(slots)
    starts = ends - slots
    item = jnp.arange(num_items, dtype=jnp.int32)
    group = jnp.searchsorted(ends, item, side="right").astype(jnp.int32)
    local = item - starts[group]
    count = counts[group]
    src = jnp.clip(group_ptr[group] + jnp.minimum(local, count - 1), 0, nnz - 1)
    flags = (
        jnp.where(local < count, VALID, 0)
        | jnp.where(local == 0, FIRST, 0)
        | jnp.where(item == ends[group] - 1, LAST, 0)
    )
    return GroupedSchedule(
        in_idx[src].astype(jnp.int32),
        data_idx[src].astype(jnp.int32),
        group,
        flags.astype(jnp.int32),
    )

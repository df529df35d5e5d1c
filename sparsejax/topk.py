"""Exact top-k masks without sorting.

Mask updates need "the k largest scores" with *exactly* k winners, where k may be a traced value (GMP's
cubic schedule) and the scores may live in several leaves (global pruning) or be sharded across devices.
A sort needs a copy of the whole leaf (or of a concatenation of all leaves) plus an index array, and sorts
do not shard. Instead we search a 32-bit threshold: float32 scores map to order-preserving uint32 keys,
and a fixed 32-step bisection finds the largest key ``T`` with ``count(key >= T) >= k``. Each step is a
comparison and a reduction per leaf, which XLA shards like any other reduction.

Positions tied at the threshold are resolved by a second bisection on keys that are unique by
construction: ``index * a + b (mod 2**32)`` with ``a`` odd is a bijection, so with ``a, b`` drawn from a
PRNG key the tie order is random, and without a PRNG key it is index order. The result always has exactly
``min(k, #eligible)`` winners.

Several arrays can be searched in one loop, either jointly (one threshold: global pruning) or as
independent groups (one threshold per leaf): a whole network's per-leaf top-k costs two loops, not two
per leaf, which keeps compile times short.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

_SIGN = jnp.uint32(0x80000000)


def ordered_key(scores: Array) -> Array:
    """Maps float scores to uint32 keys with the same order (negative values and infinities included)."""
    bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
    negative = (bits & _SIGN) != 0
    return jnp.where(negative, ~bits, bits | _SIGN)


def _bisect(
    keys: Sequence[Array], eligible: Sequence[Array], groups: Sequence[int], k: Array
) -> Array:
    """Per group ``g``: the largest uint32 ``t`` with ``count(key >= t) >= k[g]`` over its arrays."""
    num_groups = k.shape[0]

    def counts(t: Array) -> Array:
        per = [jnp.int32(0)] * num_groups
        for key, e, g in zip(keys, eligible, groups):
            per[g] = per[g] + jnp.sum((key >= t[g]) & e, dtype=jnp.int32)
        return jnp.stack(per)

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2 + (hi - lo) % 2  # ceil((hi - lo) / 2), no uint32 overflow
        ok = counts(mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo = jnp.zeros((num_groups,), jnp.uint32)
    hi = jnp.full((num_groups,), 0xFFFFFFFF, jnp.uint32)
    return jax.lax.fori_loop(0, 32, body, (lo, hi))[0]


def _unique_keys(shapes: Sequence[tuple[int, ...]], key: Array | None) -> list[Array]:
    """Distinct uint32 keys for every position of every array (random order if ``key`` is given)."""
    if key is None:
        a, b = jnp.uint32(0xFFFFFFFF), jnp.uint32(0xFFFFFFFF)  # b - index: lower index wins
    else:
        a, b = jax.random.bits(key, (2,), jnp.uint32)
        a = a | jnp.uint32(1)
    out, offset = [], 0
    for shape in shapes:
        size = 1
        for d in shape:
            size *= d
        idx = jax.lax.iota(jnp.uint32, size).reshape(shape) + jnp.uint32(offset)
        out.append(idx * a + b)
        offset += size
    return out


def topk_masks(
    scores: Sequence[Array],
    k: Array | int | Sequence[Array | int],
    eligible: Sequence[Array] | None = None,
    key: Array | None = None,
    groups: Sequence[int] | None = None,
) -> list[Array]:
    """Boolean masks of the largest scores, over several arrays at once.

    Args:
      scores: float arrays (any shapes); larger wins.
      k: winners per group (one value, or one per group; Python ints or traced scalars).
      eligible: optional bool arrays; only eligible positions can win.
      key: optional PRNG key making the order among equal scores random.
      groups: group id of each array (``0..G-1``); default: all arrays form one group (joint top-k).

    Returns:
      One bool mask per array; group ``g`` has exactly ``min(k[g], #eligible in g)`` True values.
    """
    groups = [0] * len(scores) if groups is None else list(groups)
    num_groups = max(groups) + 1 if groups else 1
    k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (num_groups,))
    if eligible is None:
        eligible = [jnp.ones(s.shape, bool) for s in scores]
    keys = [ordered_key(s) for s in scores]
    t = _bisect(keys, eligible, groups, k)
    above = [(kk > t[g]) & e for kk, e, g in zip(keys, eligible, groups)]
    ties = [(kk == t[g]) & e for kk, e, g in zip(keys, eligible, groups)]
    taken = [jnp.int32(0)] * num_groups
    for a, g in zip(above, groups):
        taken[g] = taken[g] + jnp.sum(a, dtype=jnp.int32)
    remaining = k - jnp.stack(taken)
    tied = [jnp.int32(0)] * num_groups
    for tie, g in zip(ties, groups):
        tied[g] = tied[g] + jnp.sum(tie, dtype=jnp.int32)
    unique = _unique_keys([s.shape for s in scores], key)
    # Continuous scores rarely tie at the threshold: then every tie is a winner and the second
    # bisection (t2 = 0 selects all ties) is skipped at run time.
    t2 = jax.lax.cond(
        jnp.any(jnp.stack(tied) > remaining),
        lambda: _bisect(unique, ties, groups, remaining),
        lambda: jnp.zeros((num_groups,), jnp.uint32),
    )
    return [
        a | (tie & (u >= t2[g]) & (remaining[g] > 0))
        for a, tie, u, g in zip(above, ties, unique, groups)
    ]


def topk_mask(
    scores: Array, k: Array | int, eligible: Array | None = None, key: Array | None = None
) -> Array:
    """Boolean mask of the ``k`` largest entries of one array (see :func:`topk_masks`)."""
    return topk_masks([scores], k, None if eligible is None else [eligible], key)[0]

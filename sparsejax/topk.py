"""Exact top-k masks without sorting.

Mask updates need "the k largest scores" with *exactly* k winners, where k may be a traced value (GMP's
cubic schedule) and the scores may live in several leaves (global pruning) or be sharded across devices.
A sort needs a copy of the whole leaf (or of a concatenation of all leaves) plus an index array, and sorts
do not shard. Instead we search the 32-bit threshold: float32 scores are mapped to order-preserving uint32
keys, and a fixed 32-step bisection finds the largest key ``T`` with ``count(key >= T) >= k``. Each step is
one comparison and one reduction per leaf, which XLA shards like any other reduction. Scores equal to the
threshold are resolved by a secondary random key (if given), then by flat index order, so the result always
has exactly ``min(k, #eligible)`` winners.
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


def _count_ge(keys: Sequence[Array], eligible: Sequence[Array], t: Array) -> Array:
    return sum(jnp.sum((k >= t) & e, dtype=jnp.int32) for k, e in zip(keys, eligible))


def _threshold(keys: Sequence[Array], eligible: Sequence[Array], k: Array) -> Array:
    """Largest uint32 ``t`` with ``count(key >= t) >= k`` (0 when fewer than k are eligible)."""

    def body(_, bounds):
        lo, hi = bounds
        # ceil((hi - lo) / 2) without overflowing uint32.
        mid = lo + (hi - lo) // 2 + (hi - lo) % 2
        ok = _count_ge(keys, eligible, mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, body, (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))
    return lo


def _flat_rank(x: Array) -> Array:
    """Inclusive running count of True values in flat (row-major) order, shaped like ``x``."""
    flat = jnp.cumsum(x.reshape(-1).astype(jnp.int32))
    return flat.reshape(x.shape)


def topk_masks(
    scores: Sequence[Array],
    k: Array | int,
    eligible: Sequence[Array] | None = None,
    tiebreak: Sequence[Array] | None = None,
) -> list[Array]:
    """Boolean masks of the ``k`` largest scores taken jointly over several arrays.

    Args:
      scores: float arrays (any shapes); larger wins.
      k: number of winners over all arrays together (Python int or traced int scalar).
      eligible: optional bool arrays; only eligible positions can win.
      tiebreak: optional float arrays (e.g. uniform noise) ordering positions with equal scores.

    Returns:
      One bool mask per input with exactly ``min(k, #eligible)`` True values in total.
    """
    keys = [ordered_key(s) for s in scores]
    if eligible is None:
        eligible = [jnp.ones(s.shape, bool) for s in scores]
    k = jnp.asarray(k, jnp.int32)
    t = _threshold(keys, eligible, k)
    above = [(key > t) & e for key, e in zip(keys, eligible)]
    ties = [(key == t) & e for key, e in zip(keys, eligible)]
    remaining = k - sum(jnp.sum(a, dtype=jnp.int32) for a in above)
    if tiebreak is not None:
        chosen = topk_masks(tiebreak, remaining, eligible=ties)
        return [a | c for a, c in zip(above, chosen)]
    out, before = [], jnp.int32(0)
    for a, tie in zip(above, ties):
        rank = _flat_rank(tie) + before
        out.append(a | (tie & (rank <= remaining)))
        before = before + jnp.sum(tie, dtype=jnp.int32)
    return out


def topk_mask(
    scores: Array,
    k: Array | int,
    eligible: Array | None = None,
    tiebreak: Array | None = None,
) -> Array:
    """Boolean mask of the ``k`` largest entries of one array (see :func:`topk_masks`)."""
    return topk_masks(
        [scores],
        k,
        None if eligible is None else [eligible],
        None if tiebreak is None else [tiebreak],
    )[0]

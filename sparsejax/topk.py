"""Exact top-k masks without sorting.

Mask updates need "the k largest scores" with *exactly* k winners, where k may be a traced value (GMP's
cubic schedule) and the scores may live in several leaves (global pruning) or be sharded across devices.
A sort needs a copy of the whole leaf (or of a concatenation of all leaves) plus an index array, and sorts
do not shard. Instead we search a 32-bit threshold: float32 scores map to order-preserving uint32 keys,
and a fixed 32-step bisection finds the largest key ``T`` with ``count(key >= T) >= k``. Each step is a
comparison and a reduction per leaf, which XLA shards like any other reduction.

Positions tied at the threshold are resolved by a second bisection on keys that are unique by
construction: a keyed mixing hash of the flat index (:func:`mix_index`: xor-shift/multiply rounds, each a
bijection of uint32) orders the positions in a pseudo-random permutation drawn by the PRNG key, so the
winners among ties are a uniformly random subset; without a PRNG key the order is index order. The result
always has exactly ``min(k, #eligible)`` winners. (An affine order ``index * a + b`` would be a bijection
too, but a Weyl sequence: its winners form a lattice with three distinct gaps, not a random subset.)

Several arrays can be searched in one loop, either jointly (one threshold: global pruning) or as
independent groups (one threshold per leaf): a whole network's per-leaf top-k costs two loops, not two
per leaf, which keeps compile times short.

Memory: no key array is ever stored. Keys (``|w|`` for ``magnitude=True``, so no ``abs`` copy either),
tie keys and tie sets are recomputed inside each loop step from the inputs, and counts go through
:func:`count_true`; a top-k over a leaf needs only small temporaries besides its output mask.
Keys pass through one float add (see ``_bits``), so on backends that flush subnormals (XLA CPU) those
rank as zero; counts stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_SIGN = np.uint32(0x80000000)  # numpy: importing sparsejax must not start a JAX backend


def _bits(x: Array, salt: Array | int) -> Array:
    # Adding ``salt`` (a traced 0 inside loops) before any other op keeps XLA's loop-invariant code
    # motion from hoisting the key computation, which would store a leaf-sized key array. The add
    # changes values (-0.0 becomes +0.0, XLA CPU flushes subnormals to zero), so every key that is
    # compared with a searched threshold must be salted too: ``topk_masks`` passes a traced zero.
    x = x + jnp.asarray(salt, x.dtype) if isinstance(salt, jax.Array) else x
    return jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)


def ordered_key(scores: Array, salt: Array | int = 0) -> Array:
    """Maps float scores to uint32 keys with the same order (negative values and infinities included)."""
    bits = _bits(scores, salt)
    bits = jnp.where(bits == _SIGN, jnp.uint32(0), bits)  # -0.0 keys like +0.0: equal values
    negative = (bits & _SIGN) != 0
    return jnp.where(negative, ~bits, bits | _SIGN)


def magnitude_key(x: Array, salt: Array | int = 0) -> Array:
    """uint32 keys ordered like ``|x|``: the float bits without the sign bit."""
    return _bits(x, salt) & ~_SIGN


def _lowbias32(x: Array) -> Array:
    # xor-shift / odd-multiply rounds (constants from Wellons' hash-prospector "lowbias32"): each step
    # is a bijection of uint32, and one flipped input bit flips about half of the output bits.
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def mix_index(index: Array, seeds: Array) -> Array:
    """A keyed pseudo-random permutation of uint32: ``index`` -> unique uint32 rank keys.

    Two hash rounds, each keyed by one word of ``seeds`` (uint32, shape (2,)), mixed in by xor before
    and by add between: a bijection for any ``seeds``, so ranking positions by it is exact (no two keys
    tie), and different seeds give orders that look independent. Elementwise on the global flat index,
    so sharded leaves get the same order as unsharded ones with no communication.
    """
    return _lowbias32(_lowbias32(index ^ seeds[0]) + seeds[1])


def _chunk(n: int) -> int:
    return max(c for c in range(1, min(n, 32) + 1) if n % c == 0)


def count_true(pred: Array, rows: bool = False) -> Array:
    """Number of True entries (int32).

    XLA on CPU rewrites a large reduction into a tree of reduce-windows and stores its (converted)
    input in full: a plain int32 sum of a bool leaf costs a leaf-sized int32 buffer. Chunks of at most
    32 are reduced inside the producing fusion instead, and only the 1/32-sized uint8 partial sums are
    stored; chunks run along the minor axis, or with ``rows=True`` down the second-minor axis. Rows
    keep the minor axis as vector lanes: about 3x faster when ``pred`` is a stored bool array or a
    simple op on some, several times slower when its producer is a longer computation (the top-k
    searches below), so callers choose. Both keep any sharding of the other axes.
    """
    if pred.ndim == 0 or pred.size < 4096:
        return jnp.sum(pred, dtype=jnp.int32)
    # uint8 partial sums (<= 32): with int32 XLA would merge the two reductions back into one.
    if rows and pred.ndim >= 2 and pred.shape[-1] >= 16 and _chunk(pred.shape[-2]) >= 8:
        c = _chunk(pred.shape[-2])
        chunks = pred.reshape(*pred.shape[:-2], pred.shape[-2] // c, c, pred.shape[-1])
        return jnp.sum(jnp.sum(chunks, axis=-2, dtype=jnp.uint8), dtype=jnp.int32)
    c = _chunk(pred.shape[-1])
    if c < 8 and pred.size % 32 == 0:  # odd last axis (prime, 1): chunk the flattened array instead
        pred, c = pred.reshape(-1, 32), 32
    chunks = pred.reshape(*pred.shape[:-1], pred.shape[-1] // c, c)
    return jnp.sum(jnp.sum(chunks, axis=-1, dtype=jnp.uint8), dtype=jnp.int32)


def _per_group(counts: Sequence[Array], groups: Sequence[int], num_groups: int) -> Array:
    """(G,) int32: the per-array ``counts`` summed within each group."""
    out = [jnp.int32(0)] * num_groups
    for c, g in zip(counts, groups):
        out[g] = out[g] + c
    return jnp.stack(out)


def _bisect(
    selected: Callable[[int, Array, Array], Array],
    groups: Sequence[int],
    k: Array,
) -> tuple[Array, Array, Array]:
    """Per group ``g``: a uint32 ``t`` with ``count(selected(i, t, 0)) >= k[g]`` over its arrays, that
    count (int32 max if no step tested ``t`` itself: then ``t = 0``), and a traced uint32 zero to salt
    keys computed after the loop exactly like those inside it.

    ``t`` has exactly ``k`` selected positions when such a ``t`` exists (the search stops at the first
    one it meets, usually well before 32 steps), else it is the largest ``t`` with more. ``selected(i,
    t, salt)`` is array ``i``'s eligible positions with key ``>= t``; ``salt`` is a uint32 zero that
    depends on the loop state, so XLA cannot hoist the key computation out of the loop (which would
    store a leaf-sized key array for the whole search).
    """
    num_groups = k.shape[0]

    def body(state):
        lo, hi, count, step = state
        salt = jax.lax.convert_element_type(step, jnp.uint32) >> 31  # 0, as step < 33
        mid = lo + (hi - lo) // 2 + (hi - lo) % 2  # ceil((hi - lo) / 2), no uint32 overflow
        counts = [count_true(selected(a, mid[g], salt)) for a, g in enumerate(groups)]
        per = _per_group(counts, groups, num_groups)
        ok, done = per >= k, lo >= hi
        new_lo = jnp.where(ok & ~done, mid, lo)
        new_hi = jnp.where(done, hi, jnp.where(per == k, mid, jnp.where(ok, hi, mid - 1)))
        return new_lo, new_hi, jnp.where(ok & ~done, per, count), step + 1

    lo = jnp.zeros((num_groups,), jnp.uint32)
    hi = jnp.full((num_groups,), 0xFFFFFFFF, jnp.uint32)
    count = jnp.full((num_groups,), jnp.iinfo(jnp.int32).max, jnp.int32)
    state = (lo, hi, count, jnp.int32(0))
    lo, _, count, step = jax.lax.while_loop(lambda s: jnp.any(s[0] < s[1]), body, state)
    return lo, count, jax.lax.convert_element_type(step, jnp.uint32) >> 31


def topk_masks(
    scores: Sequence[Array | None],
    k: Array | int | Sequence[Array | int],
    eligible: Sequence[Array] | None = None,
    key: Array | None = None,
    groups: Sequence[int] | None = None,
    magnitude: bool = False,
    ineligible: Sequence[Array] | None = None,
) -> list[Array]:
    """Boolean masks of the largest scores, over several arrays at once.

    Args:
      scores: float arrays (any shapes); larger wins. ``None`` entries mean "all equal": a uniformly
        random choice with ``key`` (shape taken from ``eligible`` or ``ineligible``).
      k: winners per group (one value, or one per group; Python ints or traced scalars).
      eligible: optional bool arrays; only eligible positions can win.
      key: optional PRNG key making the order among equal scores random.
      groups: group id of each array (``0..G-1``); default: all arrays form one group (joint top-k).
      magnitude: rank by ``|score|`` (computed on the fly, no copy of the scores).
      ineligible: optional bool arrays of positions that cannot win (saves storing ``~mask``).

    Returns:
      One bool mask per array; group ``g`` has exactly ``min(k[g], #eligible in g)`` True values.
    """
    groups = [0] * len(scores) if groups is None else list(groups)
    num_groups = max(groups) + 1 if groups else 1
    k = jnp.broadcast_to(jnp.asarray(k, jnp.int32), (num_groups,))
    to_key = magnitude_key if magnitude else ordered_key
    like = [next(x[i] for x in (scores, eligible, ineligible) if x is not None and x[i] is not None)
            for i in range(len(scores))]  # fmt: skip
    shapes = [jnp.shape(x) for x in like]

    def ok(i: int, salt: Array | int = 0) -> Array:
        out = True if eligible is None else eligible[i]
        if ineligible is not None:  # salted like the keys, so ``~ineligible`` is never stored
            out = out & ~(ineligible[i] ^ (salt != 0))
        return out

    def key_of(i: int, salt: Array | int = 0) -> Array:
        if scores[i] is None:
            return jnp.zeros(shapes[i], jnp.uint32)  # a broadcast constant: never stored
        return to_key(scores[i], salt)

    if all(s is None for s in scores):  # only the random tie order decides
        t = jnp.zeros((num_groups,), jnp.uint32)
        at_least_t = jnp.full((num_groups,), jnp.iinfo(jnp.int32).max, jnp.int32)
        zero = 0
    else:
        # ``zero`` salts the keys below like those the search compared (see ``_bits``).
        t, at_least_t, zero = _bisect(
            lambda i, th, salt: (key_of(i, salt) >= th) & ok(i, salt), groups, k
        )

    # Without a key, ``~index``: the lower index wins.
    seeds = None if key is None else jax.random.bits(key, (2,), jnp.uint32)
    offsets = [0]
    for shape in shapes[:-1]:
        offsets.append(offsets[-1] + math.prod(shape))

    def unique(i: int, salt: Array | int = 0) -> Array:
        # Flat index from per-axis iotas, each salted first (see ``_bits``): a hoisted index
        # computation would be a leaf-sized uint32 array.
        shape, idx, stride = shapes[i], jnp.uint32(offsets[i]), 1
        for d in reversed(range(len(shape))):
            axis = jax.lax.broadcasted_iota(jnp.uint32, shape, d) ^ jnp.uint32(salt)
            idx, stride = idx + axis * jnp.uint32(stride), stride * shape[d]
        return ~idx if seeds is None else mix_index(idx, seeds)

    def tie(i: int, salt: Array | int = 0) -> Array:
        return (key_of(i, salt) == t[groups[i]]) & ok(i, salt)

    def break_ties() -> tuple[Array, Array]:
        above = [count_true((key_of(i, zero) > t[g]) & ok(i)) for i, g in enumerate(groups)]
        remaining = k - _per_group(above, groups, num_groups)
        unique_tie = lambda i, th, salt: (unique(i, salt) >= th) & tie(i, salt)  # noqa: E731
        return _bisect(unique_tie, groups, remaining)[0], remaining

    # Continuous scores rarely tie at the threshold: then ``count(key >= t) <= k``, every tie wins
    # (t2 = 0) and the tie-breaking search is skipped at run time.
    t2, remaining = jax.lax.cond(
        jnp.any(at_least_t > k), break_ties, lambda: (jnp.zeros((num_groups,), jnp.uint32), k)
    )
    out = []
    for i, g in enumerate(groups):
        kk = key_of(i, zero)
        win = (kk > t[g]) | ((kk == t[g]) & (unique(i) >= t2[g]) & (remaining[g] > 0))
        out.append(win & ok(i))
    return out


def topk_mask(
    scores: Array,
    k: Array | int,
    eligible: Array | None = None,
    key: Array | None = None,
    magnitude: bool = False,
) -> Array:
    """Boolean mask of the ``k`` largest entries of one array (see :func:`topk_masks`)."""
    eligibles = None if eligible is None else [eligible]
    (mask,) = topk_masks([scores], k, eligibles, key, None, magnitude)
    return mask

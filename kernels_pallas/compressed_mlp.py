"""A compressed block-sparse MLP block, ``fc2(act(fc1(x)))``, that computes only the hidden units
``fc2`` reads.

With few stored blocks, ``fc2`` reads few row panels of the hidden layer: at 90% of 128-blocks on a
384 -> 1536 -> 384 block, its 4 blocks read at most 4 of the 12 hidden panels. The other hidden
units are dead: they reach no output and get no gradient. Two compressed layers applied one after
the other cannot know that (the topology is data), so they compute the whole (tokens, mlp_dim)
hidden layer: a zero fill, a scatter of the fc1 products, the activation forward and backward, and
the same again for ``fc2``'s input gradient. ``CompressedBlockMLP`` computes the ``P = min(nnz2, KB2)``
panels ``fc2`` can read instead, in the batched layout of ``xla_coo``:

- the panels are the distinct block rows of ``fc2``'s slots (padded with an out-of-range index);
- fc1: every slot's panel of x times its block, added into the hidden panel of its block column if
  ``fc2`` reads it (dropped otherwise), plus the bias: the pre-activations of the P panels;
- fc2: each slot reads its hidden panel, its product is added into its output panel.

The result and every gradient are those of the unfused layers (the dead units contribute exact
zeros); ``jax.grad`` differentiates the gathers, products and scatters as they are. RigL's grow
scores need the dense gradients, so on mask-update steps only (``lax.cond``) the probes' cotangents
rebuild them: for fc1 from the panels' gradients (zero elsewhere), for fc2 from the whole hidden
layer, recomputed from the fc1 products. Params are those of two ``CompressedBlockDense`` named
``fc1`` and ``fc2``: checkpoints and ``compressed_algorithm`` do not tell the forms apart.

Where nothing is dead (``P == KB2``: at 50% every panel is read) or the layers cannot fuse (``impl``
pallas or dense, block shapes that do not chain, no biases), the block runs the two layers unfused.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from kernels_pallas import topology
from kernels_pallas.compressed import CompressedBlockDense, CompressedWeight, dense_grad_scores

Array = jax.Array

# The impls whose products the fused block stands in for (it is an XLA formulation).
FUSED_IMPLS = ("auto", "xla")


def num_panels(w2: CompressedWeight) -> int:
    """How many hidden panels the fused block computes: at most one per fc2 slot and per block row."""
    return min(w2.data.shape[0], topology.grid_of(w2.shape, w2.block_shape)[0])


def can_fuse(w1: CompressedWeight, w2: CompressedWeight) -> bool:
    """Whether fusing skips work: fc1's output blocks are fc2's input panels and some are dead."""
    kb2 = topology.grid_of(w2.shape, w2.block_shape)[0]
    chained = w1.shape[1] == w2.shape[0] and w1.block_shape[1] == w2.block_shape[0]
    return chained and num_panels(w2) < kb2


def fused_mlp(
    x: Array,
    w1: CompressedWeight,
    b1: Array,
    w2: CompressedWeight,
    b2: Array,
    activation: Callable[[Array], Array] = nn.gelu,
    precision: Any = None,
) -> Array:
    """``act(x @ W1 + b1) @ W2 + b2`` for x of shape (..., K), computing only the hidden panels W2
    reads (requires ``can_fuse(w1, w2)``); f32 math, the result in x's dtype. Differentiable in x,
    both weights' blocks and probes, and the biases."""
    if not can_fuse(w1, w2):
        raise ValueError(
            f"fused_mlp: {w1.shape} and {w2.shape} blocks do not chain with dead panels"
        )
    lead, k = x.shape[:-1], x.shape[-1]
    ft = jnp.promote_types(x.dtype, jnp.float32)
    x2, d1, d2, b1, b2 = (a.astype(ft) for a in (x.reshape(-1, k), w1.data, w2.data, b1, b2))
    m, (bk1, bn1), bn2 = x2.shape[0], w1.block_shape, w2.block_shape[1]
    (kb1, nb1), (kb2, nb2) = (topology.grid_of(w.shape, w.block_shape) for w in (w1, w2))
    r1, c1 = topology.coordinates(w1.positions, (kb1, nb1))
    r2, c2 = topology.coordinates(w2.positions, (kb2, nb2))
    p = num_panels(w2)
    panels = jnp.unique(r2, size=p, fill_value=kb2).astype(jnp.int32)  # sorted, padding last
    reads = jnp.searchsorted(panels, r2).astype(jnp.int32)  # fc2 slot -> its panel
    at = jnp.clip(jnp.searchsorted(panels, c1), 0, p - 1)
    writes = jnp.where(panels[at] == c1, at, p).astype(jnp.int32)  # fc1 slot -> panel, p: dead

    xs = jnp.take(x2.reshape(m, kb1, bk1), r1, axis=1, mode="clip")  # (M, nnz1, bk1)
    p1 = jnp.einsum("mti,tio->mto", xs, d1, precision=precision)
    z = jnp.zeros((m, p, bn1), ft).at[:, writes].add(p1, mode="drop")
    z = z + jnp.take(b1.reshape(nb1, bn1), panels, axis=0, mode="fill", fill_value=0)
    if w1.probe is not None:
        scores = functools.partial(_fc1_scores, nb1, w1.block_shape, precision)
        z = _probe(scores, z, w1.probe, jnp.asarray(w1.scoring, bool), x2, panels)
    h = jnp.take(activation(z), reads, axis=1)  # (M, nnz2, bn1): each fc2 slot's panel
    p2 = jnp.einsum("mti,tio->mto", h, d2, precision=precision)
    y = jnp.zeros((m, nb2, bn2), ft).at[:, c2].add(p2).reshape(m, -1)
    if w2.probe is not None:
        scores = functools.partial(_fc2_scores, activation, w2.block_shape, precision)
        y = _probe(scores, y, w2.probe, jnp.asarray(w2.scoring, bool), p1, c1, b1)
    return (y + b2).astype(x.dtype).reshape(*lead, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _probe(scores, value, probe, scoring, *residuals):
    """Identity on ``value``; the probe's cotangent: ``scores(cotangent, *residuals)`` (a layer's
    dense-gradient block norms) when ``scoring``, zeros otherwise."""
    return value


def _probe_fwd(scores, value, probe, scoring, *residuals):
    return value, (probe, scoring, residuals)


def _probe_bwd(scores, res, ct):
    probe, scoring, residuals = res
    zeros = lambda: jnp.zeros(probe.shape, jnp.float32)  # noqa: E731
    dprobe = jax.lax.cond(scoring, lambda: scores(ct, *residuals), zeros)
    return (ct, dprobe, None, *(None,) * len(residuals))


_probe.defvjp(_probe_fwd, _probe_bwd)


def _fc1_scores(nb1, block_shape, precision, dz, x2, panels):
    """fc1's block norms from the panels' pre-activation gradient (zero outside the panels)."""
    m = x2.shape[0]
    full = jnp.zeros((m, nb1, dz.shape[-1]), dz.dtype).at[:, panels].set(dz, mode="drop")
    return dense_grad_scores(x2, full.reshape(m, -1), block_shape, precision)


def _fc2_scores(activation, block_shape, precision, dy, p1, c1, b1):
    """fc2's block norms against the whole hidden layer, rebuilt from the fc1 products ``p1``."""
    m, bn1 = p1.shape[0], p1.shape[-1]
    z = jnp.zeros((m, b1.shape[0] // bn1, bn1), p1.dtype).at[:, c1].add(p1)
    return dense_grad_scores(activation(z.reshape(m, -1) + b1), dy, block_shape, precision)


class CompressedBlockMLP(nn.Module):
    """``fc2(activation(fc1(x)))`` with both layers ``CompressedBlockDense`` (params ``fc1`` and
    ``fc2``, each ``kernel`` (nnz, bk, bn) and ``bias``), fused where fc2 leaves hidden units dead.

    Attributes:
      mlp_dim: hidden width.
      out_features: output width (None: the input width).
      block_size, density, impl, precision, dtype: as ``CompressedBlockDense`` (both layers).
      activation: the hidden nonlinearity.
      fuse: False always runs the two layers one after the other.
      layer_options: any other ``CompressedBlockDense`` keywords for both layers (``param_dtype``,
        ``kernel_init``, ``bias_init``; ``interpret``, ``backend`` for an unfused Pallas impl).
    """

    mlp_dim: int
    out_features: int | None = None
    block_size: int | tuple[int, int] = 128
    density: float = 0.1
    impl: str = "auto"
    precision: Any = None
    dtype: Any = None
    activation: Callable[[Array], Array] = nn.gelu
    fuse: bool = True
    layer_options: Mapping[str, Any] = FrozenDict()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Apply the block to (..., in_features) inputs."""
        common = dict(block_size=self.block_size, density=self.density, impl=self.impl)
        common.update(precision=self.precision, dtype=self.dtype, **self.layer_options)
        fc1 = CompressedBlockDense(self.mlp_dim, name="fc1", **common)
        fc2 = CompressedBlockDense(self.out_features or x.shape[-1], name="fc2", **common)
        w1, b1 = fc1.weights(x.shape[-1])
        w2, b2 = fc2.weights(self.mlp_dim)
        biased = b1 is not None and b2 is not None
        if not (self.fuse and biased and self.impl in FUSED_IMPLS and can_fuse(w1, w2)):
            return fc2(self.activation(fc1(x)))
        x, d1, b1, d2, b2 = nn.dtypes.promote_dtype(x, w1.data, b1, w2.data, b2, dtype=self.dtype)
        w1, w2 = dataclasses.replace(w1, data=d1), dataclasses.replace(w2, data=d2)
        return fused_mlp(x, w1, b1, w2, b2, self.activation, self.precision)

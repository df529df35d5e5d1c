"""Flax ``BlockSparseDense``: a Dense layer whose matmul runs block-sparse.

The parameter is an ordinary dense ``kernel`` of shape (in, out), so sparsejax masks, optax states and
checkpoints treat it exactly like ``nn.Dense``'s. Each forward pass reads the block topology off the
(masked) kernel: the static ``nnz = round(density * num_blocks)`` blocks with the largest norms, which
after masking are the active ones. A changed mask therefore changes only index arrays, never shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels_pallas.blocks import as_block_shape, expand_block_mask, top_block_positions
from kernels_pallas.format import validate_block_shape
from kernels_pallas.masked import masked_kernel_matmul


def nnz_for_density(density: float, num_blocks: int) -> int:
    """Static stored-block count for a block density: round(density * num_blocks), at least 1."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, min(num_blocks, round(density * num_blocks)))


def positions_from_block_mask(block_mask: jax.Array, nnz: int) -> jax.Array:
    """Sorted flat positions of the True blocks, padded with False ones up to the static ``nnz``."""
    flat = block_mask.reshape(-1)
    return jnp.sort(jnp.argsort(jnp.logical_not(flat), stable=True)[:nnz]).astype(jnp.int32)


class BlockSparseDense(nn.Module):
    """Dense layer y = x @ kernel + bias computed with the block-sparse op on ``density`` of the blocks.

    Attributes:
      features: output width; ``in_features`` and ``features`` must be multiples of the block shape.
      block_size: int or (bk, bn).
      density: fraction of blocks computed (the static block count); set it to the layer's mask density
        (or an upper bound: extra blocks are zero and cost compute but stay correct).
      dense_weight_grad: False gives a kernel gradient only on the computed blocks; True gives the full
        dense x^T @ dY (dL/d(w * m) everywhere), which RigL's gradient-based growth needs.
      impl, interpret, backend, precision: passed to ``block_sparse_matmul``.
    """

    features: int
    block_size: int | tuple[int, int] = 128
    density: float = 0.1
    use_bias: bool = True
    dense_weight_grad: bool = False
    impl: str = "auto"
    interpret: Any = None
    backend: str | None = None
    precision: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, block_mask: jax.Array | None = None) -> jax.Array:
        """Apply the layer; an explicit (KB, NB) ``block_mask`` overrides the norm-derived topology."""
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (in_features, self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        block_shape = as_block_shape(self.block_size)
        validate_block_shape(kernel.shape, block_shape)
        grid = (in_features // block_shape[0], self.features // block_shape[1])
        nnz = nnz_for_density(self.density, grid[0] * grid[1])
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if block_mask is None:
            positions = top_block_positions(kernel, block_shape, nnz)
        else:
            kernel = kernel * expand_block_mask(block_mask, block_shape).astype(kernel.dtype)
            positions = positions_from_block_mask(block_mask, nnz)
        y = masked_kernel_matmul(
            x,
            kernel,
            positions,
            block_shape,
            dense_weight_grad=self.dense_weight_grad,
            impl=self.impl,
            interpret=self.interpret,
            backend=self.backend,
            precision=self.precision,
        )
        if bias is not None:
            y = y + bias
        return y

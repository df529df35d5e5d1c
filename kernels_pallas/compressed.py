"""Compressed block-sparse layers: the trainable parameter is the stored blocks, nothing dense.

``CompressedBlockDense`` holds ``kernel`` of shape (nnz, bk, bn): the stored blocks of a (K, N) kernel
and nothing else. Which block each slot holds (the topology) belongs to the sparse-training state
(``kernels_pallas.compressed_training``); its forward hook hands the layer a ``CompressedWeight``
(blocks + slot positions + an optional score probe), so a step reads the blocks only:

* forward ``y = x @ W``, ``dX = dY @ W^T``: the block-sparse products of ``ops`` (any ``impl``);
* ``dW``: SDD on the stored blocks only;
* the probe: a (KB, NB) zero input whose cotangent is the squared L2 norm of every block of the dense
  gradient ``x^T dY``, computed under ``lax.cond(scoring)`` only. RigL grows by these block norms,
  so the dense gradient exists on mask-update steps and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels_pallas import dispatch, topology
from kernels_pallas.blocks import as_block_shape
from kernels_pallas.format import BlockSparseMatrix
from kernels_pallas.layer import nnz_for_density
from kernels_pallas.ops import grouped_product, plan_for, weight_grad
from kernels_pallas.xla_coo import coo_product, coo_weight_grad, order_free
from sparsejax.masks import to_blocks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CompressedWeight:
    """What a compressed layer computes with: its blocks placed by a slot topology.

    Attributes:
      data: (nnz, bk, bn) stored blocks (the layer's ``kernel`` param), in slot order.
      positions: (nnz,) int32 flat grid position (``row * NB + col``) of each slot's block.
      probe: (KB, NB) f32 zeros whose gradient is the block norms of the dense gradient, or None.
      scoring: bool scalar, compute those norms in this backward pass (mask-update steps), or None.
      shape: static (K, N) of the kernel the blocks stand for.
    """

    data: jax.Array
    positions: jax.Array
    probe: jax.Array | None
    scoring: jax.Array | None
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

    @property
    def block_shape(self) -> tuple[int, int]:
        """(bk, bn) of the stored blocks."""
        return tuple(self.data.shape[1:])


def dense_grad_scores(x: jax.Array, dy: jax.Array, block_shape, precision: Any = None) -> jax.Array:
    """(KB, NB) squared L2 norms of the blocks of the dense gradient ``x^T @ dy`` (f32).

    The same reduction as ``sparsejax.masks.magnitude_scores`` of the masked-dense kernel gradient, so
    compressed and masked-dense RigL rank blocks alike.
    """
    g = jnp.dot(x.T, dy, precision=precision, preferred_element_type=jnp.float32)
    return to_blocks(jnp.square(g), tuple(block_shape))


def _csr_weight(shape, data, view) -> BlockSparseMatrix:
    perm, indices, indptr = view
    return BlockSparseMatrix(data[perm], indices, indptr, shape, tuple(data.shape[1:]))


def _grid(shape, data) -> tuple[int, int]:
    return topology.grid_of(shape, tuple(data.shape[1:]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _product(plan, shape, x, data, view, probe, scoring):
    return _product_fwd(plan, shape, x, data, view, probe, scoring)[0]


def _product_fwd(plan, shape, x, data, view, probe, scoring):
    if order_free(plan):  # view: (rows, cols) of the slots, used in slot order as they are
        y = coo_product(plan, x, data, *view, _grid(shape, data), False)
    else:  # keep the blocks in CSR order for the backward pass
        w = _csr_weight(shape, data, view)
        y, data = grouped_product(plan.fwd, plan, x, w, False), w.data
    return y, (x, data, view, probe, scoring)


def _product_bwd(plan, shape, res, dy):
    x, data, view, probe, scoring = res
    if order_free(plan):
        dx = coo_product(plan, dy, data, *view, _grid(shape, data), True)
        dw = coo_weight_grad(plan, x, dy, *view, data)
    else:
        w = BlockSparseMatrix(data, view[1], view[2], shape, tuple(data.shape[1:]))  # CSR order
        dx = grouped_product(plan.dx, plan, dy, w, True)
        # dW in CSR order, back to slot order: a gather by the inverse permutation.
        dw = weight_grad(plan.dw, plan, x, dy, w)[jnp.argsort(view[0])]
    dprobe = None
    if probe is not None:
        dprobe = jax.lax.cond(
            scoring,
            lambda: dense_grad_scores(x, dy, data.shape[1:], plan.precision),
            lambda: jnp.zeros(probe.shape, jnp.float32),
        )
    return dx.astype(x.dtype), dw, (None,) * len(view), dprobe, None


_product.defvjp(_product_fwd, _product_bwd)


def compressed_matmul(
    x: jax.Array,
    w: CompressedWeight,
    *,
    impl: str = "auto",
    interpret: Any = None,
    backend: str | None = None,
    precision: Any = None,
) -> jax.Array:
    """y = x @ W for x of shape (..., K) and a compressed W; differentiable in x, the blocks and the probe.

    ``impl`` and the other keywords as for ``block_sparse_matmul`` (the same dispatch).
    """
    k, n = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features but W stands for a {w.shape} kernel")
    grid = topology.grid_of(w.shape, w.block_shape)
    dtype = dispatch.result_dtype(x, w.data)
    x2 = x.reshape(-1, k).astype(dtype)
    data = w.data.astype(dtype)
    meta = BlockSparseMatrix(
        jax.ShapeDtypeStruct(data.shape, dtype), None, None, tuple(w.shape), w.block_shape
    )
    kw = dict(impl=impl, interpret=interpret, backend=backend, precision=precision)
    plan = plan_for(x2, meta, dtype, kw)
    if order_free(plan):  # the slots' coordinates as they are
        view = topology.coordinates(w.positions, grid)
    else:
        view = tuple(topology.csr(w.positions, grid))
    probe, scoring = (None, None) if w.probe is None else (w.probe, jnp.asarray(w.scoring, bool))
    y = _product(plan, tuple(w.shape), x2, data, view, probe, scoring)
    return y.reshape(*x.shape[:-1], n)


def blocks_init(kernel_init: Callable[..., jax.Array], fan_in: int) -> Callable[..., jax.Array]:
    """An initializer of (nnz, bk, bn) blocks drawn like ``kernel_init`` on a kernel with ``fan_in``
    rows (values are i.i.d., so the stored blocks look like blocks of the dense initialisation)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        total = math.prod(shape)
        cols = -(-total // fan_in)
        return kernel_init(key, (fan_in, cols), dtype).reshape(-1)[:total].reshape(shape)

    return init


class CompressedBlockDense(nn.Module):
    """``y = x @ W + bias`` with W stored compressed: the param ``kernel`` is (nnz, bk, bn) blocks.

    The topology comes from the sparse-training state: apply the model with
    ``sj.forward_params(params, opt_state)`` of a ``kernels_pallas.compressed_algorithm``. ``model.init``
    (no state yet) computes with the first ``nnz`` blocks.

    Attributes:
      features: output width; the input width and ``features`` must be multiples of the block shape.
      block_size: int or (bk, bn).
      density: fraction of blocks stored: ``nnz = round(density * num_blocks)``.
      impl, interpret, backend, precision: passed to the block-sparse products.
      kernel_init: the dense kernel's initializer; blocks are drawn from it at the dense fan-in.
    """

    features: int
    block_size: int | tuple[int, int] = 128
    density: float = 0.1
    use_bias: bool = True
    impl: str = "auto"
    interpret: Any = None
    backend: str | None = None
    precision: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def weights(self, in_features: int) -> tuple[CompressedWeight, jax.Array | None]:
        """The layer's ``CompressedWeight`` (blocks placed by the forward hook's topology) and bias,
        unpromoted, for ``in_features`` inputs; what ``__call__`` computes with (and a fused caller
        such as ``CompressedBlockMLP``)."""
        shape = (in_features, self.features)
        block_shape = as_block_shape(self.block_size)
        kb, nb = topology.grid_of(shape, block_shape)
        nnz = nnz_for_density(self.density, kb * nb)
        if self.has_variable("params", "kernel"):
            w = self.get_variable("params", "kernel")
        else:
            init = blocks_init(self.kernel_init, shape[0])
            w = self.param("kernel", init, (nnz, *block_shape), self.param_dtype)
        if not isinstance(w, CompressedWeight):
            if not self.is_initializing():
                raise ValueError(
                    f"{self.name}: the kernel holds only its {nnz} stored blocks; apply the model "
                    "with sj.forward_params(params, opt_state) of kernels_pallas.compressed_algorithm"
                )
            w = CompressedWeight(w, jnp.arange(nnz, dtype=jnp.int32), None, None, shape)
        if tuple(w.shape) != shape or w.data.shape != (nnz, *block_shape):
            raise ValueError(
                f"{self.name}: the topology is for a {w.shape} kernel with blocks "
                f"{w.data.shape}; the layer computes {shape} with {(nnz, *block_shape)}"
            )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        return w, bias

    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the layer to (..., in_features) inputs."""
        w, bias = self.weights(x.shape[-1])
        x, data, bias = nn.dtypes.promote_dtype(x, w.data, bias, dtype=self.dtype)
        y = compressed_matmul(
            x,
            dataclasses.replace(w, data=data),
            impl=self.impl,
            interpret=self.interpret,
            backend=self.backend,
            precision=self.precision,
        )
        return y if bias is None else y + bias

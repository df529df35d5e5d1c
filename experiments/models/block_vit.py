"""A plain ViT (``experiments.models.vit``) whose MLP blocks are block-sparse, and its checks.

Every encoder block's ``fc1`` (hidden_dim -> mlp_dim) and ``fc2`` (mlp_dim -> hidden_dim) is a block
layer with square ``block_size`` blocks, compressed (``CompressedBlockMLP``: two ``CompressedBlockDense``
whose kernel params are the stored blocks, the topology in the sparse-training state, fused so that
the hidden units ``fc2`` never reads are not computed) or masked-dense (``BlockSparseDense``);
patch embedding, attention and head stay dense. The sparsity algorithm must sparsify exactly the MLP
kernels (``configs/block_rigl_vit.py``: overrides keep the rest dense) with a constant block count,
uniformly at ``1 - density`` (the checks of ``block_mlp``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from experiments.errors import ConfigError
from experiments.models import block_mlp
from experiments.models.vit import SelfAttention, embed_patches, pool_and_classify
from kernels_pallas.compressed_mlp import CompressedBlockMLP

check_layer_mask = block_mlp.check_layer_mask
sparse_algorithm = block_mlp.sparse_algorithm


class BlockMlpBlock(nn.Module):
    """Block-sparse ``fc1`` -> GELU -> block-sparse ``fc2`` (the fields of ``BlockViT``)."""

    mlp_dim: int
    spec: block_mlp.LayerSpec

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.gelu(block_mlp.block_layer(self.spec, self.mlp_dim, "fc1")(x))
        return block_mlp.block_layer(self.spec, x.shape[-1], "fc2")(h)


def mlp_block(spec: block_mlp.LayerSpec, mlp_dim: int, name: str, fuse: bool = True) -> nn.Module:
    """The MLP block a spec describes, params ``fc1`` and ``fc2`` either way: compressed, the fused
    ``CompressedBlockMLP`` (``fuse=False``: its layers one after the other); masked-dense,
    ``BlockMlpBlock``."""
    if spec.compressed:
        common = dict(block_size=spec.block_size, density=spec.density, impl=spec.impl)
        return CompressedBlockMLP(mlp_dim, activation=nn.gelu, fuse=fuse, name=name, **common)
    return BlockMlpBlock(mlp_dim, spec, name=name)


class BlockViT(nn.Module):
    """Patch embedding -> ``depth`` pre-LN blocks (dense attention, block-sparse MLP) -> mean pool ->
    ``head``.

    Attributes:
      patch_size, hidden_dim, depth, num_heads, mlp_dim: as ``ViT``; ``hidden_dim`` and ``mlp_dim``
        multiples of ``block_size``.
      block_size, density, impl, dense_weight_grad, compressed: as ``BlockMLP``.
    """

    num_classes: int = 10
    patch_size: int = 4
    hidden_dim: int = 64
    depth: int = 2
    num_heads: int = 2
    mlp_dim: int = 256
    block_size: int = 16
    density: float = 0.1
    impl: str = "auto"
    dense_weight_grad: bool = True
    compressed: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Logits for a batch of (b, h, w, c) images."""
        x = embed_patches(x, self.patch_size, self.hidden_dim)
        for i in range(self.depth):
            attn = SelfAttention(self.num_heads, name=f"block{i}_attn")
            x = x + attn(nn.LayerNorm(name=f"ln{i}_0")(x))
            mlp = mlp_block(block_mlp.spec_of(self), self.mlp_dim, f"block{i}_mlp")
            x = x + mlp(nn.LayerNorm(name=f"ln{i}_1")(x))
        return pool_and_classify(x, self.num_classes)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError (one line) if ``config.model`` and ``config.sparsity`` cannot agree."""
    defaults = BlockViT()
    m = {k: v for k, v in config.model.items() if v is not None}
    block = m.get("block_size", defaults.block_size)
    block_mlp.check_block_size(block)
    for key in ("hidden_dim", "mlp_dim"):
        width = m.get(key, getattr(defaults, key))
        if isinstance(width, bool) or not isinstance(width, int) or width < 1 or width % block:
            raise ConfigError(
                f"config.model.{key}={width!r}: allowed positive multiples of "
                f"config.model.block_size={block}"
            )
    block_mlp.check_block_sparsity(config, defaults, "block_vit")


def check_masks(model: BlockViT, masks: Any) -> None:
    """Every block layer's initial mask keeps exactly its static block count (masked-dense form)."""
    for i in range(model.depth):
        for fc in ("fc1", "fc2"):
            name = f"block{i}_mlp/{fc}"
            check_layer_mask(model, name, masks[f"block{i}_mlp"][fc]["kernel"])

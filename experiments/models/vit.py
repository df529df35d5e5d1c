"""A plain Vision Transformer (Beyer et al. 2022 "Better plain ViT baselines" recipe).

Fixed 2-D sin-cos position embeddings and global average pooling instead of a class token, so every
trainable matrix is a 2-D ``Dense`` kernel whose axis 0 is the contraction axis: N:M sparsity (e.g. PGF 1:8)
groups along it with no special cases. Patches are embedded by reshape + ``Dense`` for the same reason.
LayerNorm only, so the model is stateless.
"""

import flax.linen as nn
import jax.numpy as jnp


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> jnp.ndarray:
    """Fixed (h * w, dim) position embedding; ``dim`` must be a multiple of 4."""
    y, x = jnp.mgrid[:h, :w]
    omega = 1.0 / temperature ** (jnp.arange(dim // 4) / (dim // 4 - 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dense."""

    mlp_dim: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        d = x.shape[-1]
        return nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(self.mlp_dim, name="fc1")(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` kernel (d, 3d) and an ``out`` kernel (d, d)."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, n, d = x.shape
        qkv = nn.Dense(3 * d, name="qkv")(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(x.dtype)
        y = jnp.einsum("bhqk,bkhc->bqhc", nn.softmax(logits, axis=-1), v).reshape(b, n, d)
        return nn.Dense(d, name="out")(y)


def embed_patches(x: jnp.ndarray, patch_size: int, hidden_dim: int) -> jnp.ndarray:
    """(b, h, w, c) images -> (b, patches, hidden_dim) tokens plus 2-D sin-cos positions.

    Call inside a compact method: its Dense becomes the caller's ``embedding``.
    """
    b, h, w, c = x.shape
    p = patch_size
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = nn.Dense(hidden_dim, name="embedding")(x.reshape(b, (h // p) * (w // p), p * p * c))
    return x + posemb_sincos_2d(h // p, w // p, hidden_dim).astype(x.dtype)[None]


def pool_and_classify(x: jnp.ndarray, num_classes: int) -> jnp.ndarray:
    """Tokens -> LayerNorm (``final_norm``) -> mean over tokens -> ``head`` logits (inside a compact method)."""
    x = nn.LayerNorm(name="final_norm")(x).mean(axis=1)
    return nn.Dense(num_classes, name="head")(x)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block."""

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x + SelfAttention(self.num_heads, name="attn")(nn.LayerNorm(name="ln_0")(x))
        return x + MlpBlock(self.mlp_dim, name="mlp")(nn.LayerNorm(name="ln_1")(x))


class ViT(nn.Module):
    """Patch embedding -> ``depth`` encoder blocks -> LayerNorm -> mean pool -> ``head``."""

    num_classes: int = 10
    patch_size: int = 4
    hidden_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_dim: int = 768

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = embed_patches(x, self.patch_size, self.hidden_dim)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"block{i}")(x)
        return pool_and_classify(x, self.num_classes)


class ViTTiny(ViT):
    """ViT-Ti sizes (192 wide, 12 blocks, 3 heads); configs shrink ``depth`` for CPU runs."""

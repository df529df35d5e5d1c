"""A small decoder-only transformer language model (GPT-style, pre-LN, causal self-attention).

Token embedding + fixed sinusoidal positions (no trainable position matrix, so every sparsifiable 2-D
leaf is a real weight), ``depth`` pre-LN blocks (``block{i}/attn/{qkv,out}``, ``block{i}/mlp/{fc1,fc2}``),
a final LayerNorm and a head: tied to the embedding (``tie_embeddings``) or its own ``head`` Dense.
All block kernels are 2-D ``Dense`` kernels with the contraction on axis 0, so N:M patterns apply as is.
Inputs are token ids (any dtype; floats are rounded), outputs are ``(batch, time, vocab)`` logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from experiments.models.vit import MlpBlock


def posemb_sincos_1d(length: int, dim: int, temperature: float = 10_000.0) -> jnp.ndarray:
    """Fixed ``(length, dim)`` sinusoidal position embedding; ``dim`` must be even."""
    omega = 1.0 / temperature ** (jnp.arange(dim // 2) / max(dim // 2 - 1, 1))
    angles = jnp.arange(length)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused ``qkv`` kernel (d, 3d) and an ``out`` kernel."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, t, d = x.shape
        h = self.num_heads
        qkv = nn.Dense(3 * d, name="qkv")(x).reshape(b, t, 3, h, d // h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(x.dtype)
        causal = jnp.tril(jnp.ones((t, t), bool))
        logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
        y = jnp.einsum("bhqk,bkhc->bqhc", nn.softmax(logits, axis=-1), v).reshape(b, t, d)
        return nn.Dense(d, name="out")(y)


class DecoderBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x + CausalSelfAttention(self.num_heads, name="attn")(nn.LayerNorm(name="ln_0")(x))
        return x + MlpBlock(self.mlp_dim, name="mlp")(nn.LayerNorm(name="ln_1")(x))


class TransformerLM(nn.Module):
    """``embed`` -> ``depth`` decoder blocks -> LayerNorm -> tied or untied head; vocab = num_classes."""

    num_classes: int = 256
    hidden_dim: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    tie_embeddings: bool = True

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            tokens = jnp.round(tokens)
        tokens = tokens.astype(jnp.int32)
        embed = nn.Embed(self.num_classes, self.hidden_dim, name="embed")
        x = embed(tokens)  # unit-variance rows, the same scale as the position embedding
        x = x + posemb_sincos_1d(tokens.shape[1], self.hidden_dim)[None]
        for i in range(self.depth):
            x = DecoderBlock(self.num_heads, self.mlp_dim, name=f"block{i}")(x)
        x = nn.LayerNorm(name="final_norm")(x)
        if self.tie_embeddings:
            return embed.attend(x) / jnp.sqrt(self.hidden_dim).astype(x.dtype)
        return nn.Dense(self.num_classes, name="head")(x)

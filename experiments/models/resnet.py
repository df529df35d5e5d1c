"""ResNets with BatchNorm: CIFAR-style ResNet-20/18, Wide ResNet-22-2 and ImageNet ResNet-50.

BatchNorm statistics live in the ``batch_stats`` collection; the train loop applies the model with
``mutable=["batch_stats"]`` and checkpoints the statistics with the parameters, so resume stays exact.
Module names (``stem``, ``stage{i}_block{j}``, ``head``) are stable so sparsity regex overrides can target
them, e.g. ``{"^stem/": 0.0}`` keeps the first convolution dense.
"""

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax.numpy as jnp


def _norm(train: bool, name: str, zero_init: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        name=name,
    )


_conv = partial(nn.Conv, use_bias=False, kernel_init=nn.initializers.kaiming_normal())


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (1x1 projection when the shape changes)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        s = (self.strides, self.strides)
        y = _conv(self.features, (3, 3), s, name="conv_0")(x)
        y = nn.relu(_norm(train, "norm_0")(y))
        y = _conv(self.features, (3, 3), name="conv_1")(y)
        # Zero-init of the last norm makes every block start as the identity (Goyal et al. 2017).
        y = _norm(train, "norm_1", zero_init=True)(y)
        if x.shape != y.shape:
            x = _conv(self.features, (1, 1), s, name="shortcut")(x)
            x = _norm(train, "shortcut_norm")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) residual block of ResNet-50."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        s = (self.strides, self.strides)
        y = nn.relu(_norm(train, "norm_0")(_conv(self.features, (1, 1), name="conv_0")(x)))
        y = nn.relu(_norm(train, "norm_1")(_conv(self.features, (3, 3), s, name="conv_1")(y)))
        y = _norm(train, "norm_2", zero_init=True)(
            _conv(4 * self.features, (1, 1), name="conv_2")(y)
        )
        if x.shape != y.shape:
            x = _norm(train, "shortcut_norm")(
                _conv(4 * self.features, (1, 1), s, name="shortcut")(x)
            )
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet: ``stem`` ("cifar": 3x3 conv; "imagenet": 7x7/2 conv + 3x3/2 max-pool), stages, pooled head.

    Stage ``i`` has ``stage_sizes[i]`` blocks of width ``width * 2**i``; stages after the first downsample.
    """

    num_classes: int = 10
    stage_sizes: Sequence[int] = (3, 3, 3)
    width: int = 16
    block: str = "basic"  # basic | bottleneck
    stem: str = "cifar"  # cifar | imagenet

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
        if self.stem == "imagenet":
            x = _conv(self.width, (7, 7), (2, 2), name="stem")(x)
            x = nn.relu(_norm(train, "stem_norm")(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        else:
            x = nn.relu(_norm(train, "stem_norm")(_conv(self.width, (3, 3), name="stem")(x)))
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = block_cls(self.width * 2**i, strides, name=f"stage{i}_block{j}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class ResNet20(ResNet):
    """CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 basic blocks, widths 16/32/64."""


class ResNet18(ResNet):
    """CIFAR-style ResNet-18: 3x3 stem, 4 stages x 2 basic blocks, widths 64..512."""

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64


class ResNet50(ResNet):
    """ImageNet ResNet-50: 7x7 stem + max-pool, bottleneck blocks (3, 4, 6, 3), widths 64..512 (x4)."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    block: str = "bottleneck"
    stem: str = "imagenet"


class WideBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis 2016)."""

    features: int
    strides: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        s = (self.strides, self.strides)
        y = nn.relu(_norm(train, "norm_0")(x))
        shortcut = x
        if x.shape[-1] != self.features or self.strides != 1:
            shortcut = _conv(self.features, (1, 1), s, name="shortcut")(y)
        y = _conv(self.features, (3, 3), s, name="conv_0")(y)
        y = nn.relu(_norm(train, "norm_1")(y))
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = _conv(self.features, (3, 3), name="conv_1")(y)
        return shortcut + y


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: 3 groups of ``(depth - 4) / 6`` wide blocks, widths 16k/32k/64k."""

    num_classes: int = 10
    depth: int = 22
    widen: int = 2
    width: int = 16
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        n_blocks = (self.depth - 4) // 6
        x = _conv(self.width, (3, 3), name="stem")(x)
        for i in range(3):
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                features = self.width * self.widen * 2**i
                x = WideBlock(features, strides, self.dropout, name=f"stage{i}_block{j}")(x, train)
        x = nn.relu(_norm(train, "final_norm")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


class WRN22_2(WideResNet):
    """WRN-22-2, the CIFAR-10 network of the RigL paper."""

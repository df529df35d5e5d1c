"""LeNet-5-style CNN (two conv + pool stages, two hidden dense layers)."""

import flax.linen as nn
import jax.numpy as jnp


class LeNet(nn.Module):
    """Conv(6, 5x5) -> pool -> Conv(16, 5x5) -> pool -> 120 -> 84 -> head, every layer times a multiplier."""

    num_classes: int = 10
    width_multiplier: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        w = self.width_multiplier
        # SAME padding keeps this usable on 8x8 `digits` as well as 28x28 MNIST and 32x32 CIFAR.
        x = nn.relu(nn.Conv(6 * w, (5, 5), padding="SAME", name="stem")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16 * w, (5, 5), padding="SAME", name="conv_1")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120 * w, name="dense_0")(x))
        x = nn.relu(nn.Dense(84 * w, name="dense_1")(x))
        return nn.Dense(self.num_classes, name="head")(x)

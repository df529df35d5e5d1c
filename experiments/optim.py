"""The inner optax optimizer and learning-rate schedule from ``config.optimizer``."""

from __future__ import annotations

import jax
import ml_collections
import optax

from experiments.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "lion")
SCHEDULES = ("constant", "cosine", "linear", "step")


def check(opt: ml_collections.ConfigDict, num_steps: int) -> None:
    """Raise ConfigError for an invalid ``config.optimizer`` value."""
    if opt.name not in OPTIMIZERS:
        raise ConfigError(
            f"config.optimizer.name: unknown optimizer {opt.name!r}; allowed: {', '.join(OPTIMIZERS)}"
        )
    if opt.schedule not in SCHEDULES:
        raise ConfigError(
            f"config.optimizer.schedule: unknown schedule {opt.schedule!r}; allowed: {', '.join(SCHEDULES)}"
        )
    if not opt.learning_rate > 0:
        raise ConfigError(
            f"config.optimizer.learning_rate={opt.learning_rate}: allowed values are > 0"
        )
    for key in ("weight_decay", "grad_clip_norm", "label_smoothing", "momentum"):
        if opt[key] < 0:
            raise ConfigError(f"config.optimizer.{key}={opt[key]}: allowed values are >= 0")
    if any(not 0 < b < 1 for b in opt.decay_boundaries):
        raise ConfigError(
            f"config.optimizer.decay_boundaries={tuple(opt.decay_boundaries)}: allowed fractions of num_steps in (0, 1)"
        )


def schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step: optional linear warm-up, then the named schedule."""
    lr, warmup = float(opt.learning_rate), int(opt.warmup_steps)
    decay_steps = max(num_steps - warmup, 1)
    if opt.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps)
    elif opt.schedule == "linear":
        main = optax.linear_schedule(lr, 0.0, decay_steps)
    else:  # step
        bounds = {
            int(b * num_steps) - warmup: float(opt.decay_factor) for b in opt.decay_boundaries
        }
        main = optax.piecewise_constant_schedule(lr, {k: v for k, v in bounds.items() if k > 0})
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _kernels(params):
    # Weight decay on kernels only: decaying norm scales and biases hurts and is not what the papers do.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def build(
    opt: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer (without sparsity; ``sj.sparsify`` wraps it) and its learning-rate schedule."""
    check(opt, num_steps)
    lr = schedule(opt, num_steps)
    wd = float(opt.weight_decay)
    if opt.name == "adamw":
        core = optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=_kernels)
    elif opt.name == "lion":
        core = optax.lion(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=_kernels)
    else:
        if opt.name == "adam":
            core = optax.adam(lr, b1=opt.b1, b2=opt.b2)
        elif opt.name == "momentum":
            core = optax.sgd(lr, momentum=opt.momentum, nesterov=opt.nesterov)
        else:
            core = optax.sgd(lr)
        if wd:  # coupled L2, as in the SGD recipes of RigL and the ResNet papers
            core = optax.chain(optax.add_decayed_weights(wd, mask=_kernels), core)
    if opt.grad_clip_norm:
        core = optax.chain(optax.clip_by_global_norm(float(opt.grad_clip_norm)), core)
    return core, lr

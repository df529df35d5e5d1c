"""Up-front checks of a resolved config and workdir: one clear line per problem, before any compile.

``config.sparsity`` is validated by ``sparsejax.from_config`` (and N:M divisibility by ``tx.init``);
everything else is checked here. Dataset names are checked when the data source is opened (cheap, no
network), model keys by the model registry. The workdir is only checked (``experiments.workdir``):
``train`` creates it, parents included, right before the run starts, so a rejected run leaves nothing.
"""

from __future__ import annotations

import ml_collections

from experiments import data, models, optim
from experiments.errors import ConfigError
from experiments.workdir import check_workdir
from kernels_pallas import xla_cpu

WANDB_MODES = ("disabled", "offline", "online")

# key -> smallest allowed value, for integer settings
_INT_MINIMUMS = {
    "seed": 0,
    "num_steps": 0,
    "batch_size": 1,
    "eval_batch_size": 0,
    "log_every": 1,
    "eval_every": 0,
    "checkpoint_every": 0,
    "keep_checkpoints": 1,
    "data.crop_padding": 0,
    "data.image_size": 0,
    "data.max_eval_examples": 0,
    "data.num_threads": 0,
    "optimizer.warmup_steps": 0,
}


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise ConfigError(
                f"config.{dotted}: missing; start configs from configs/base.py:get_base_config()"
            )
        node = node[part]
    return node


def check(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
    """Raise ConfigError for the first invalid value outside ``config.sparsity``."""
    for key, minimum in _INT_MINIMUMS.items():
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config.{key}={value!r}: allowed integers >= {minimum}")
        if value < minimum:
            raise ConfigError(f"config.{key}={value}: allowed integers >= {minimum}")
    mode = _get(config, "wandb.mode")
    if mode not in WANDB_MODES:
        raise ConfigError(
            f"config.wandb.mode: unknown mode {mode!r}; allowed: {', '.join(WANDB_MODES)}"
        )
    dots = _get(config, "xla_cpu_dots")
    if dots not in xla_cpu.DOT_LIBRARIES:
        raise ConfigError(
            f"config.xla_cpu_dots: unknown library {dots!r}; allowed: {', '.join(xla_cpu.DOT_LIBRARIES)}"
        )
    name = _get(config, "data.name")
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"config.data.name={name!r}: allowed mnist5k, digits or a TFDS dataset name"
        )
    if _get(config, "data.augment") not in data.AUGMENTATIONS:
        raise ConfigError(
            f"config.data.augment: unknown augmentation {config.data.augment!r}; "
            f"allowed: {', '.join(data.AUGMENTATIONS)}"
        )
    optim.check(_get(config, "optimizer"), config.num_steps)
    models.check(_get(config, "model"))
    _get(config, "sparsity")
    models.check_config(config)
    if workdir is not None:
        check_workdir(workdir)

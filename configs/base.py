"""Defaults for every key a run reads; each config file starts from ``get_base_config()``.

Keys are documented in docs/experiments.md. ``None``-valued keys are typed placeholders, so they can still
be set from the command line (``--config.sparsity.end_step=500``).
"""

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
    """A dense small-CNN run on the embedded ``mnist5k`` digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_steps = 300
    config.batch_size = 128
    config.eval_batch_size = 0  # 0: same as batch_size

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "momentum"  # sgd | momentum | adam | adamw | lion
    config.optimizer.learning_rate = 0.1
    config.optimizer.schedule = "cosine"  # constant | cosine | linear | step
    config.optimizer.warmup_steps = 0  # linear warm-up from 0, before any schedule
    config.optimizer.decay_boundaries = (0.3, 0.6, 0.9)  # `step` schedule: fractions of num_steps
    config.optimizer.decay_factor = 0.1  # `step` schedule: multiplier at each boundary
    config.optimizer.weight_decay = 5e-4  # on kernels (ndim >= 2) only
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.grad_clip_norm = 0.0  # 0: off
    config.optimizer.label_smoothing = 0.0

    config.model = ml_collections.ConfigDict()
    config.model.name = "lenet"

    config.data = ml_collections.ConfigDict()
    config.data.name = "mnist5k"  # mnist5k | digits | any prepared TFDS image-classification dataset
    config.data.tfds_data_dir = ""  # "": TFDS default (~/tensorflow_datasets)
    config.data.download = False
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.image_key = "image"
    config.data.label_key = "label"
    config.data.augment = "none"  # none | crop | crop_flip | inception
    config.data.crop_padding = 4
    config.data.image_size = 0  # 0: native size; >0: resize/crop (required for varying sizes)
    config.data.max_eval_examples = 0  # 0: the whole eval split
    config.data.num_threads = 2

    config.sparsity = ml_collections.ConfigDict()
    s = config.sparsity
    s.algorithm = "dense"
    s.sparsity = 0.9
    s.distribution = "erk"  # uniform | er | erk | custom
    s.overrides = {}  # regex on leaf path -> sparsity (0.0 keeps it dense), or "regex=s;regex=s"
    s.dense_first = False
    s.dense_last = False
    s.init = "random"  # random | magnitude
    s.block_size = config_dict.placeholder(tuple)
    s.update_every = 100
    s.start_step = 0
    s.end_step = config_dict.placeholder(int)  # None: 75% of num_steps
    s.drop_fraction = 0.3
    s.drop_schedule = config_dict.placeholder(str)  # cosine | constant (None: algorithm default)
    s.initial_sparsity = 0.0
    s.n = config_dict.placeholder(int)
    s.m = config_dict.placeholder(int)
    s.nm_axis = -2  # contraction axis of Dense (in, out) and Conv (h, w, in, out) kernels
    s.skip_indivisible = False
    s.sr_decay = 2e-4
    s.pgf_mode = "mdgf"  # mdgf | sdgf
    s.pgf_decay = "linear"  # linear | exp
    s.pgf_coef = 1e-4
    s.sdgf_schedule = "sparsify"  # sparsify | fine
    s.warmup_steps = 0
    s.seed = 0

    config.log_every = 10
    config.eval_every = 100  # 0: only at the end
    config.checkpoint_every = 100  # 0: only at the end (and on SIGTERM)
    config.keep_checkpoints = 2

    config.wandb = ml_collections.ConfigDict()
    config.wandb.mode = "disabled"  # disabled | offline | online
    config.wandb.project = "sparsejax"
    config.wandb.entity = ""
    config.wandb.name = ""  # "": the workdir's name
    return config


def preset(arg: str | None, allowed: tuple[str, ...]) -> str:
    """The preset named by ``get_config(arg)``'s argument (``None``: the first), or one clear error."""
    name = arg or allowed[0]
    if name not in allowed:
        raise ValueError(f"config argument {name!r}: allowed presets are {', '.join(allowed)}")
    return name

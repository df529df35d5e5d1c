"""Defaults for every key a run reads; each config file starts from ``get_base_config()``.

Keys are documented in docs/experiments.md. ``None``-valued keys are typed placeholders, so they can still
be set from the command line (``--config.sparsity.end_step=500``). ``config.sparsity`` holds the keyword
arguments of every registered algorithm: register your own (``sj.register_algorithm``) before calling
``get_base_config()`` and its arguments become keys too.
"""

import ml_collections
from ml_collections import config_dict

import sparsejax as sj


def get_base_config() -> ml_collections.ConfigDict:
    """A dense small-CNN run on the embedded ``mnist5k`` digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_steps = 300
    config.batch_size = 128
    config.eval_batch_size = 0  # 0: same as batch_size
    # False: random ops compile ~5x faster on CPU; set True for RNG sharded over several devices.
    config.threefry_partitionable = False
    # XLA:CPU's dot library for the train and eval steps: ynnpack (XLA's default) | eigen (faster for
    # compressed block-sparse layers, slower for dense ones; kernels_pallas/xla_cpu.py).
    config.xla_cpu_dots = "ynnpack"

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
    # mlp | block_mlp | lenet | resnet20 | resnet18 | wrn22_2 | resnet50 | vit_tiny | block_vit |
    # transformer_lm
    config.model.name = "lenet"
    # Every model's keys, None meaning "that model's default" (so any of them can be set from the CLI).
    m = config.model
    m.hidden = config_dict.placeholder(tuple)  # mlp, block_mlp: hidden widths
    m.width_multiplier = config_dict.placeholder(int)  # lenet
    m.width = config_dict.placeholder(int)  # resnets: first-stage channels; wrn: before widening
    m.stage_sizes = config_dict.placeholder(tuple)  # resnets: blocks per stage
    m.block = config_dict.placeholder(str)  # resnets: basic | bottleneck
    m.stem = config_dict.placeholder(str)  # resnets: cifar | imagenet
    m.depth = config_dict.placeholder(int)  # wrn: total depth; vit: number of blocks
    m.widen = config_dict.placeholder(int)  # wrn
    m.dropout = config_dict.placeholder(float)  # wrn
    m.patch_size = config_dict.placeholder(int)  # vit
    m.hidden_dim = config_dict.placeholder(int)  # vit
    m.num_heads = config_dict.placeholder(int)  # vit
    m.mlp_dim = config_dict.placeholder(int)  # vit, transformer_lm
    m.tie_embeddings = config_dict.placeholder(bool)  # transformer_lm
    m.block_size = config_dict.placeholder(int)  # block_mlp/vit: square block edge of sparse layers
    m.density = config_dict.placeholder(float)  # block_mlp/vit: block density, 1 - sparsity
    m.impl = config_dict.placeholder(str)  # block_mlp/vit: auto | xla | pallas | dense
    m.dense_weight_grad = config_dict.placeholder(bool)  # block_mlp/vit masked: dense kernel grads
    m.compressed = config_dict.placeholder(bool)  # block_mlp/vit: params = the stored blocks only

    config.data = ml_collections.ConfigDict()
    config.data.name = "mnist5k"  # mnist5k | digits | fashion_mnist | any prepared TFDS image-classification dataset
    config.data.tfds_data_dir = ""  # "": TFDS default (~/tensorflow_datasets)
    config.data.idx_dir = (
        ""  # fashion_mnist idx files; "": where Debian installs them (sources.IDX_DIRS)
    )
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

    # Every key of every registered algorithm, with the constructors' defaults (one source of truth;
    # None: the chosen algorithm's own default). Keys and values: docs/algorithms.md.
    config.sparsity = ml_collections.ConfigDict()
    for key, (default, kind) in sj.registry.config_fields().items():
        config.sparsity[key] = config_dict.placeholder(kind) if default is None else default

    # Device mesh (docs/distributed.md); -1 takes the remaining devices; one device = no sharding.
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1})

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


TASKS = ("default", "cifar10", "imagenet")


def set_task(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
    """Model, data, optimizer and step counts of a standard task (the same for every algorithm).

    default: ResNet-20 (width 8) on the embedded mnist5k digits; a few minutes on 2 CPU cores.
    cifar10: WRN-22-2 on CIFAR-10 with the RigL paper's recipe (batch 128, 250 epochs, step decay).
    imagenet: ResNet-50 on ImageNet with the RigL paper's recipe (batch 4096, 100 epochs).
    """
    s = config.sparsity
    if task == "default":
        config.model.name = "resnet20"
        config.model.width = 8
        config.data.name = "mnist5k"
        config.data.augment = "crop"
        config.data.crop_padding = 2
        config.num_steps = 400  # ~13 epochs of the 4,000 training digits
        config.batch_size = 128
        config.optimizer.learning_rate = 0.1
        config.optimizer.warmup_steps = 30
        s.update_every = 25
        config.log_every = 25
        config.eval_every = 100
        config.checkpoint_every = 100
    elif task == "cifar10":
        # RigL's CIFAR-10 recipe: SGD momentum 0.9, lr 0.1 with 5x drops, weight decay 5e-4, 250 epochs.
        config.model.name = "wrn22_2"
        config.data.name = "cifar10"
        config.data.augment = "crop_flip"
        config.num_steps = 97_656
        config.batch_size = 128
        config.optimizer.learning_rate = 0.1
        config.optimizer.schedule = "step"
        config.optimizer.decay_boundaries = (0.3, 0.6, 0.9)
        config.optimizer.decay_factor = 0.2
        config.optimizer.weight_decay = 5e-4
        s.update_every = 100
        config.log_every = 100
        config.eval_every = 5_000
        config.checkpoint_every = 5_000
    elif task == "imagenet":
        # RigL's ImageNet recipe: lr 1.6 (0.1 x 4096/256) with 5 warm-up epochs, 10x drops at epochs
        # 30/70/90, Nesterov momentum, label smoothing 0.1, weight decay 1e-4, 32k steps of 4096.
        config.model.name = "resnet50"
        config.data.name = "imagenet2012"
        config.data.eval_split = "validation"
        config.data.augment = "inception"
        config.data.image_size = 224
        config.data.num_threads = 32
        config.num_steps = 32_000
        config.batch_size = 4096
        config.eval_batch_size = 1000
        config.optimizer.learning_rate = 1.6
        config.optimizer.warmup_steps = 1_563
        config.optimizer.schedule = "step"
        config.optimizer.decay_boundaries = (0.3, 0.7, 0.9)
        config.optimizer.decay_factor = 0.1
        config.optimizer.weight_decay = 1e-4
        config.optimizer.nesterov = True
        config.optimizer.label_smoothing = 0.1
        s.update_every = 100
        s.end_step = 25_000
        config.log_every = 100
        config.eval_every = 2_000
        config.checkpoint_every = 1_000
    else:
        raise ValueError(f"task {task!r}: allowed {', '.join(TASKS)}")
    return config


def preset(arg: str | None, allowed: tuple[str, ...]) -> str:
    """The preset named by ``get_config(arg)``'s argument (``None``: the first), or one clear error."""
    name = arg or allowed[0]
    if name not in allowed:
        raise ValueError(f"config argument {name!r}: allowed presets are {', '.join(allowed)}")
    return name

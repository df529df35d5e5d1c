"""Progressive Gradient Flow (Bambhaniya et al. 2024): 1:8 N:M sparsity on a ViT with mask decay (MDGF).

Presets:
  default   a 2-block ViT (width 64) on the embedded mnist5k digits; minutes on 2 CPU cores.
  imagenet  ViT-Ti (192 wide, 12 blocks) on ImageNet at 224 px, patch 16, AdamW.
"""

from configs import base

PRESETS = ("default", "imagenet")


def get_config(arg=None):
    preset = base.preset(arg, PRESETS)
    config = base.get_base_config()
    if preset == "default":
        base.set_task(config, "default")
        config.model.name = "vit_tiny"
        config.model.patch_size = 4
        config.model.hidden_dim = 64
        config.model.depth = 2
        config.model.num_heads = 4
        config.model.mlp_dim = 128
        config.data.augment = "none"
        config.optimizer.name = "adamw"
        config.optimizer.learning_rate = 1e-3
        config.optimizer.weight_decay = 1e-4
    else:
        base.set_task(config, "imagenet")
        config.model.name = "vit_tiny"
        config.model.patch_size = 16
        config.optimizer.name = "adamw"
        config.optimizer.learning_rate = 1e-3
        config.optimizer.schedule = "cosine"
        config.optimizer.warmup_steps = 3_000
        config.optimizer.weight_decay = 1e-4
        config.optimizer.grad_clip_norm = 1.0
        config.batch_size = 1024
        config.num_steps = 90_000
    s = config.sparsity
    s.algorithm = "pgf"
    s.n = 1
    s.m = 8
    s.pgf_mode = "mdgf"
    s.pgf_decay = "linear"
    # delta(t) = max(0, 1 - c t): reaches 0 at 75% of training, then the fine-tune phase is exactly 1:8.
    s.pgf_coef = 1.0 / (config.num_steps * 3 // 4)
    return config


def get_sweep(arg=None):
    """Mask decay (MDGF) vs structure decay (SDGF)."""
    return [{"sparsity.pgf_mode": "mdgf"}, {"sparsity.pgf_mode": "sdgf"}]

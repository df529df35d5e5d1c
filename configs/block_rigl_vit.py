"""Block RigL on a ViT whose MLP blocks are compressed block-sparse: 90% of their 16x16 blocks pruned.

Every encoder block's fc1 (64 -> 256) and fc2 (256 -> 64) is compressed, the pair fused in a
``kernels_pallas.CompressedBlockMLP`` (``experiments/models/block_vit.py``): the params are the stored
blocks, the topology lives in the sparse-training state, only the hidden units fc2's blocks read are
computed, RigL's dense-gradient block norms are computed on mask-update steps only.
Patch embedding, attention and head stay dense (``sparsity.overrides``, ``dense_last``). The model's
block density is tied to ``sparsity.sparsity``; ``--config.model.compressed=False`` trains the same
network in masked-dense form (same masks, same updates).

    python -m experiments.train --config=configs/block_rigl_vit.py --workdir=workdirs/block_rigl_vit

600 steps of batch 128 on the embedded mnist5k digits (7x7 patches: 16 tokens): about 30 s on 2 CPU
cores (~7 s of it compiling; `runtime_s` 25.5 with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), ~0.84
held-out accuracy.
"""

from configs import base

PRESETS = ("default",)
BLOCK = 16  # divides the ViT's widths (64, 256)


def get_config(arg=None):
    config = base.get_base_config()
    base.preset(arg, PRESETS)
    config.data.name = "mnist5k"
    config.num_steps = 600
    config.batch_size = 128
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 4e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_steps = 20
    config.log_every = 25
    config.eval_every = 100
    config.checkpoint_every = 100

    s = config.sparsity
    s.algorithm = "rigl"
    s.sparsity = 0.9
    s.distribution = "uniform"
    s.overrides = {"embedding": 0.0, "_attn/": 0.0}  # with dense_last: the MLP blocks only
    s.dense_last = True  # the head
    s.block_size = (BLOCK, BLOCK)
    s.update_every = 25
    s.drop_fraction = 0.3
    s.drop_schedule = "cosine"

    m = config.model
    m.name = "block_vit"
    m.patch_size = 7
    m.hidden_dim = 64
    m.depth = 2
    m.num_heads = 2
    m.mlp_dim = 256
    m.block_size = BLOCK
    m.density = 1.0 - s.get_ref("sparsity")  # follows --config.sparsity.sparsity
    m.impl = "auto"
    m.compressed = True
    return config

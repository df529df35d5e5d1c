"""Gradual magnitude pruning of a small byte-level transformer LM on the embedded ``pydoc_text`` corpus.

Dense to 75% sparse (uniform over the block kernels; the tied embedding stays dense) with the cubic
schedule, pruning from 25% to 75% of training ("The Journey Matters": both ends follow
``--config.num_steps``). Reports eval perplexity and the average parameter count over training.
Also the home of :func:`lm_task`, the model/data/optimizer shared by the LM configs.
"""

import ml_collections

from configs import base


def lm_task(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Transformer LM (2 blocks, width 128) on 64-byte windows of ``pydoc_text``, Adam, 600 steps."""
    config.model.name = "transformer_lm"
    config.model.hidden_dim = 128
    config.model.depth = 2
    config.model.num_heads = 4
    config.model.mlp_dim = 512
    config.model.tie_embeddings = True
    config.data.name = "pydoc_text"
    config.data.seq_len = 64
    config.data.max_eval_examples = 256
    config.num_steps = 600
    config.batch_size = 32
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 30
    config.optimizer.schedule = "cosine"
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 1.0
    config.sparsity.overrides = {"^embed/": 0.0}
    config.log_every = 25
    config.eval_every = 200
    config.checkpoint_every = 200
    return config


def get_config(arg=None):
    config = lm_task(base.get_base_config())
    s = config.sparsity
    s.algorithm = "gmp"
    s.sparsity = 0.75
    s.initial_sparsity = 0.0
    s.distribution = "uniform"
    s.update_every = 25
    s.start_step = config.get_ref("num_steps") // 4
    s.end_step = config.get_ref("num_steps") * 3 // 4
    return config

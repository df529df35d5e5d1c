"""Block RigL on a block-sparse MLP: 90% of the 16x16 blocks of every hidden layer pruned (uniform).

The hidden layers are compressed (``kernels_pallas.CompressedBlockDense``, see
``experiments/models/block_mlp.py``): their params are the stored blocks, the topology lives in the
sparse-training state, and a step computes only the stored blocks; RigL drops and grows whole blocks
(``sparsity.block_size``) by block norms of the weights and of the dense gradient, the latter computed
on mask-update steps only. ``--config.model.compressed=False`` trains the same network masked-dense
(``BlockSparseDense``: a dense kernel and a dense gradient every step; the same masks and updates).
The model's block density is tied to ``sparsity.sparsity`` by a field reference, so
``--config.sparsity.sparsity=0.8`` moves both; the run is rejected before compiling if they disagree.

    python -m experiments.train --config=configs/block_rigl_mlp.py --workdir=workdirs/block_rigl

300 steps of batch 128 on mnist5k: ~0.93 held-out accuracy, about 45 s on 2 CPU cores (30 s of it
compiling). The train step is ~1.6x faster than the masked-dense form and ~1.5x faster than the dense
MLP (CPU time, interleaved; benchmarks/sparse_training_speed.py has the 2048-wide figures).
"""

from configs import base

PRESETS = ("default",)
BLOCK = 16  # divides the 784 mnist5k pixels and the hidden widths


def get_config(arg=None):
    config = base.get_base_config()
    base.preset(arg, PRESETS)
    config.data.name = "mnist5k"
    config.num_steps = 300
    config.batch_size = 128
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.1
    config.optimizer.warmup_steps = 20
    config.log_every = 25
    config.eval_every = 100
    config.checkpoint_every = 100

    s = config.sparsity
    s.algorithm = "rigl"
    s.sparsity = 0.9
    s.distribution = "uniform"
    s.dense_last = True  # the head (hidden -> 10 classes) is an ordinary dense layer
    s.block_size = (BLOCK, BLOCK)
    s.update_every = 25
    s.drop_fraction = 0.3
    s.drop_schedule = "cosine"

    m = config.model
    m.name = "block_mlp"
    m.hidden = (256, 256)
    m.block_size = BLOCK
    m.density = 1.0 - s.get_ref("sparsity")  # follows --config.sparsity.sparsity
    m.impl = "auto"
    m.compressed = True  # params: the stored blocks; RigL's dense-gradient norms on update steps
    m.dense_weight_grad = True  # masked-dense form (compressed=False): RigL's dense gradient
    return config

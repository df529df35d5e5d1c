"""Lottery tickets (iterative magnitude pruning + rewinding) on LeNet-300-100, an MLP, on mnist5k.

    python -m experiments.lottery --config=configs/lottery.py --workdir=workdirs/lottery
    python -m experiments.lottery --config=configs/lottery.py:rewind --workdir=workdirs/lottery_rewind

Frankle & Carbin (2019)'s fully connected setting: prune 20% of the remaining weights per round, globally
by magnitude (output layer included), and rewind the survivors to the initialisation (``default``) or,
as in Frankle et al. (2020), to their values after ``rewind_step`` updates (``rewind``: step 30, 5% of
training). 10 rounds: dense, then 20%, 36%, ..., 86.6% sparse (``1 - 0.8^r``), each 600 steps of 128
(19 epochs of the 4,000 training digits) with Adam 1.2e-3 (constant) as in the paper.

Measured on 2 shared CPU cores (load average 4-5): 103 s wall, 96 s user CPU for all 10 rounds (~8 s
each: start-up, compilation, 600 steps, evaluation), peak RSS ~0.5 GB; held-out accuracy 94.8-95.4% in
every round, dense and 86.6% sparse alike (chance: 10%). ``experiments.train`` with this config trains
round 0 alone (dense).
"""

import ml_collections

from configs import base
from experiments import tickets  # noqa: F401 - registers `lottery_ticket` before the base config

PRESETS = ("default", "rewind")


def get_config(arg=None):
    name = base.preset(arg, PRESETS)
    config = base.get_base_config()
    config.model.name = "mlp"
    config.model.hidden = (300, 100)
    config.data.name = "mnist5k"
    config.num_steps = 600
    config.batch_size = 128
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1.2e-3
    config.optimizer.schedule = "constant"
    config.optimizer.weight_decay = 0.0
    config.log_every = 50
    config.eval_every = 0
    config.checkpoint_every = 200
    config.sparsity.algorithm = "dense"  # round 0; experiments.lottery sets each round's algorithm

    config.lottery = ml_collections.ConfigDict()
    config.lottery.rounds = 10  # round 0 (dense) and 9 pruning rounds
    config.lottery.prune_fraction = 0.2  # of the remaining weights, per round
    config.lottery.rewind_step = 30 if name == "rewind" else 0  # 0: the initialisation
    config.lottery.keep_dense = ""  # regex of leaf paths never pruned, e.g. "^head/"
    return config

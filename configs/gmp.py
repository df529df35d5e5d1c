"""Gradual magnitude pruning (Zhu & Gupta 2017): dense to 80% sparse with the cubic schedule.

Pruning runs from 25% to 75% of training ("The Journey Matters", 2025); both ends follow
``--config.num_steps`` unless set explicitly. Presets: default, cifar10, imagenet (``base.set_task``).
"""

from configs import base

PRESETS = base.TASKS


def get_config(arg=None):
    config = base.set_task(base.get_base_config(), base.preset(arg, PRESETS))
    s = config.sparsity
    s.algorithm = "gmp"
    s.sparsity = 0.8
    s.initial_sparsity = 0.0
    s.distribution = "uniform"
    s.start_step = config.get_ref("num_steps") // 4
    s.end_step = config.get_ref("num_steps") * 3 // 4
    return config


def get_sweep(arg=None):
    """Per-layer vs global magnitude pruning."""
    return [{"sparsity.algorithm": "gmp"}, {"sparsity.algorithm": "global_magnitude"}]

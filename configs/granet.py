"""GraNet (Liu et al. 2021): cubic pruning from dense to 80% plus gradient-based neuroregeneration.

Presets: default, cifar10, imagenet (see ``base.set_task``).
"""

from configs import base

PRESETS = base.TASKS


def get_config(arg=None):
    config = base.set_task(base.get_base_config(), base.preset(arg, PRESETS))
    s = config.sparsity
    s.algorithm = "granet"
    s.sparsity = 0.8
    s.initial_sparsity = 0.0  # dense-to-sparse; 0.5 gives the sparse-to-sparse variant
    s.distribution = "erk"
    s.drop_fraction = 0.5
    s.drop_schedule = "cosine"
    return config


def get_sweep(arg=None):
    """Dense-to-sparse vs sparse-to-sparse GraNet."""
    return [{"sparsity.initial_sparsity": 0.0}, {"sparsity.initial_sparsity": 0.5}]

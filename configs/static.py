"""Static sparse training ("random pruning", Liu et al. 2022): an ERK random mask drawn once, 80% sparse.

Presets: default, cifar10, imagenet (see ``base.set_task``).
"""

from configs import base

PRESETS = base.TASKS


def get_config(arg=None):
    config = base.set_task(base.get_base_config(), base.preset(arg, PRESETS))
    config.sparsity.algorithm = "static"
    config.sparsity.sparsity = 0.8
    config.sparsity.distribution = "erk"
    return config


def get_sweep(arg=None):
    """Sparsity levels, plus uniform vs ERK at 80%."""
    return [
        {"sparsity.sparsity": 0.8},
        {"sparsity.sparsity": 0.9},
        {"sparsity.sparsity": 0.8, "sparsity.distribution": "uniform"},
    ]

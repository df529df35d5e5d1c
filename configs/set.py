"""SET (Mocanu et al. 2018): magnitude drop, random regrowth, 80% sparse ERK.

Presets: default, cifar10, imagenet (see ``base.set_task``).
"""

from configs import base

PRESETS = base.TASKS


def get_config(arg=None):
    config = base.set_task(base.get_base_config(), base.preset(arg, PRESETS))
    s = config.sparsity
    s.algorithm = "set"
    s.sparsity = 0.8
    s.distribution = "erk"
    s.drop_fraction = 0.3
    return config

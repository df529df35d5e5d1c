"""Dense baseline on the standard tasks (presets: default, cifar10, imagenet; see ``base.set_task``)."""

from configs import base

PRESETS = base.TASKS


def get_config(arg=None):
    config = base.set_task(base.get_base_config(), base.preset(arg, PRESETS))
    config.sparsity.algorithm = "dense"
    return config

"""SR-STE (Zhou et al. 2021): 2:4 N:M sparsity on a ResNet, learned from scratch.

The stem convolution has 1 or 3 input channels, which no M > 3 divides, so it stays dense (the usual
practice for N:M). Presets: default, cifar10, imagenet (see ``base.set_task``).
"""

from configs import base

PRESETS = base.TASKS


def get_config(arg=None):
    config = base.set_task(base.get_base_config(), base.preset(arg, PRESETS))
    s = config.sparsity
    s.algorithm = "sr_ste"
    s.n = 2
    s.m = 4
    s.sr_decay = 2e-4
    s.overrides = {"^stem/": 0.0}
    return config


def get_sweep(arg=None):
    """The N:M patterns of the SR-STE paper's ResNet-50 table."""
    return [{"sparsity.n": n, "sparsity.m": m} for n, m in ((2, 4), (4, 8), (1, 4), (2, 8))]

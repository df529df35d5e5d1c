r"""RigL (Evci et al. 2020) on ResNets, 80% sparse with the ERK distribution.

Presets (``--config=configs/rigl_resnet.py:PRESET``, see ``base.set_task``):
  default   ResNet-20 (width 8) on the embedded mnist5k digits: a few minutes on 2 CPU cores.
  cifar10   WRN-22-2 on CIFAR-10 (sweep: 80% and 90%, as in the paper).
  imagenet  ResNet-50 on ImageNet: update every 100 steps until step 25k, drop fraction 0.3 (cosine).
"""

from configs import base

PRESETS = base.TASKS


def get_config(arg=None):
    config = base.set_task(base.get_base_config(), base.preset(arg, PRESETS))
    s = config.sparsity
    s.algorithm = "rigl"
    s.sparsity = 0.8
    s.distribution = "erk"
    s.drop_fraction = 0.3
    s.drop_schedule = "cosine"
    return config


def get_sweep(arg=None):
    """Points for ``python -m experiments.sweep``: the paper's two sparsity levels."""
    return [{"sparsity.sparsity": 0.8}, {"sparsity.sparsity": 0.9}]

"""SR-STE 2:4 on every attention and MLP kernel of the byte-level transformer LM (``pydoc_text``).

Same model, data and optimizer as ``configs/gmp_lm.py``; N:M groups run along each kernel's contraction
axis (axis 0 of the ``(in, out)`` Dense kernels); the tied embedding stays dense.
"""

from configs import base
from configs.gmp_lm import lm_task


def get_config(arg=None):
    config = lm_task(base.get_base_config())
    s = config.sparsity
    s.algorithm = "sr_ste"
    s.n = 2
    s.m = 4
    s.sr_decay = 2e-4
    return config

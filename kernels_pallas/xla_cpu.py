"""Which library runs a jitted step's dots on XLA:CPU: the one opt-in CPU compile option.

XLA:CPU (jax 0.10) hands every row-major f32 dot to YNNPACK, which runs a small GEMM such as one
128 x 128 block times a (256 x 128) or (1568 x 128) panel on one core. Eigen, XLA's other dot
library, splits the same GEMMs over the cores. ``dots="eigen"`` sends the dots of one compiled
program to Eigen and keeps YNNPACK for its reductions (bias gradients, norms), where it is much the
faster of the two.

It pays in steps dominated by block-sparse products and not in dense ones (dense GEMMs run faster
on YNNPACK), so it is a per-step choice: pass the result to ``jax.jit(step, compiler_options=...)``
(``experiments.train``: ``--config.xla_cpu_dots=eigen``). Results change in the last bits (another
summation order), not in meaning. Measured: ``benchmarks/results/sparse_training_speed_cpu.md``
(its Eigen-dots columns) and ``docs/kernels.md``.
"""

from __future__ import annotations

import jax

DOT_LIBRARIES = ("ynnpack", "eigen")  # XLA's default first

# YNNPACK keeps the fusion types listed (its default is individual dots only): reductions, no dots.
_EIGEN_DOTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(dots: str = "ynnpack", backend: str | None = None) -> dict[str, str] | None:
    """``compiler_options`` for ``jax.jit`` that run a step's dots with ``dots`` on XLA:CPU.

    Args:
      dots: one of ``DOT_LIBRARIES``: "ynnpack" (XLA's default) or "eigen".
      backend: the backend the step compiles for; ``None``: ``jax.default_backend()``.

    Returns:
      The options, or ``None`` (XLA's defaults) for "ynnpack" and on every backend other than CPU.
    """
    if dots not in DOT_LIBRARIES:
        raise ValueError(f"dots={dots!r}: allowed {', '.join(DOT_LIBRARIES)}")
    if dots == "ynnpack" or (backend or jax.default_backend()) != "cpu":
        return None
    return dict(_EIGEN_DOTS)

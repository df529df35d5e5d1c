"""kernels_pallas.xla_cpu: which library runs a compiled step's dots on XLA:CPU.

The options are checked where they act: in the compiled HLO of a real compressed block-RigL train step
(``benchmarks/sparse_training_speed.py`` at smoke size), and in what that step computes.
"""

import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from kernels_pallas import xla_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sparse_training_speed as speed  # noqa: E402

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")


def _dots(hlo: str) -> tuple[int, int]:
    """(dots inside YNNPACK fusions, dots elsewhere) of a compiled module's HLO text."""
    bodies = dict(re.findall(r"^(%\S+) .*?\{\n(.*?)\n\}", hlo, flags=re.M | re.S))
    ynn = set(re.findall(r"%ynn_fusion\S* = .*?calls=(%[\w.\-]+)", hlo))
    in_ynn = sum(bodies[name].count(" dot(") for name in ynn)
    return in_ynn, hlo.count(" dot(") - in_ynn


def test_options_per_library_and_backend():
    assert xla_cpu.compiler_options() is None  # XLA's default: nothing to pass
    assert xla_cpu.compiler_options("ynnpack") is None
    assert xla_cpu.compiler_options("eigen", backend="gpu") is None
    options = xla_cpu.compiler_options("eigen", backend="cpu")
    assert options and all(isinstance(v, str) for v in options.values())
    with pytest.raises(ValueError, match="^dots='mkl': allowed ynnpack, eigen$"):
        xla_cpu.compiler_options("mkl")


def test_eigen_takes_every_dot_of_a_compressed_step_off_ynnpack():
    """The same block-RigL step compiled both ways: YNNPACK runs its dots by default and none with
    ``eigen``; both compute the same update to float tolerance."""
    built = speed.build_case("mlp", speed.SIZES["smoke"], 0.9, kinds=("compressed", speed.EIGEN))
    hlo, out = {}, {}
    for kind, v in built["variants"].items():
        compiled = v["step"].lower(*v["args"]).compile()
        hlo[kind], out[kind] = compiled.as_text(), compiled(*v["args"])
    default, eigen = _dots(hlo["compressed"]), _dots(hlo[speed.EIGEN])
    assert default[0] > 0, default  # the block products' dots sit in YNNPACK fusions
    assert eigen[0] == 0 and eigen[1] >= sum(default), (default, eigen)
    for a, b in zip(jax.tree.leaves(out["compressed"]), jax.tree.leaves(out[speed.EIGEN])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

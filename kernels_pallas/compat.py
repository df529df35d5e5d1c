"""Thin compatibility layer over Pallas API names that moved between JAX releases.

Everything version-dependent that the kernels touch goes through here, so a JAX upgrade is one file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

try:  # Triton lowering module: ``pallas.triton`` (>= 0.4.36) or the older ``pallas.gpu``.
    from jax.experimental.pallas import triton as pltriton
except ImportError:  # pragma: no cover - depends on the installed release
    from jax.experimental.pallas import gpu as pltriton  # type: ignore[no-redef]

# Custom-call targets of the Triton lowering across releases (for jax.export's safety check).
TRITON_CUSTOM_CALL_TARGETS = (
    "__gpu$xla.gpu.triton",
    "triton_kernel_call_ffi",
    "triton_kernel_call",
)
TPU_CUSTOM_CALL_TARGET = "tpu_custom_call"
# Custom-call targets of the Mosaic GPU lowering (``mosaic_gpu_v2`` on jax 0.10).
MOSAIC_GPU_CUSTOM_CALL_TARGETS = ("mosaic_gpu_v2", "mosaic_gpu")

_BLOCKSPEC_SHAPE_FIRST = next(iter(inspect.signature(pl.BlockSpec).parameters)) == "block_shape"


def block_spec(block_shape: Sequence[int | None], index_map: Callable[..., Any]) -> pl.BlockSpec:
    """BlockSpec(block_shape, index_map); older releases took the index map first. ``None`` squeezes."""
    if _BLOCKSPEC_SHAPE_FIRST:
        return pl.BlockSpec(tuple(block_shape), index_map)
    return pl.BlockSpec(index_map, tuple(block_shape))  # pragma: no cover - old releases


def tpu_compiler_params(dimension_semantics: Sequence[str]) -> Any:
    """Mosaic compiler params: ``pltpu.CompilerParams`` (new) or ``pltpu.TPUCompilerParams`` (old)."""
    cls = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
    return cls(dimension_semantics=tuple(dimension_semantics))


def triton_compiler_params(num_warps: int, num_stages: int) -> Any:
    """Triton compiler params: ``CompilerParams`` (new) or ``TritonCompilerParams`` (old)."""
    cls = getattr(pltriton, "CompilerParams", None) or pltriton.TritonCompilerParams
    return cls(num_warps=num_warps, num_stages=num_stages)


def prefetch_grid_spec(
    num_scalar_prefetch: int,
    grid: tuple[int, ...],
    in_specs: Sequence[pl.BlockSpec],
    out_specs: pl.BlockSpec,
    scratch_shapes: Sequence[Any],
) -> Any:
    """``pltpu.PrefetchScalarGridSpec`` with the scalar-prefetch count first."""
    return pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=num_scalar_prefetch,
        grid=grid,
        in_specs=list(in_specs),
        out_specs=out_specs,
        scratch_shapes=list(scratch_shapes),
    )


def vmem(shape: tuple[int, ...], dtype: Any) -> Any:
    """A VMEM scratch buffer (``pltpu.VMEM``; ``pltpu.MemorySpace.VMEM`` on some releases)."""
    vmem_cls = getattr(pltpu, "VMEM", None) or pltpu.MemorySpace.VMEM
    return vmem_cls(shape, dtype)


def interpret_params_class() -> type | None:
    """``pltpu.InterpretParams`` (``TPUInterpretParams`` on older releases), or None if absent."""
    return getattr(pltpu, "InterpretParams", None) or getattr(pltpu, "TPUInterpretParams", None)


def is_tpu_interpret_params(interpret: Any) -> bool:
    """Whether ``interpret`` is a TPU interpreter config (not a plain bool)."""
    cls = interpret_params_class()
    return cls is not None and isinstance(interpret, cls)


def mosaic_gpu() -> Any:
    """``jax.experimental.pallas.mosaic_gpu`` (imported on first use: older releases lack it)."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu


def mosaic_gpu_interpret_params() -> Any:
    """The Mosaic GPU interpreter's params (runs the kernels on CPU), or None where absent.

    Not public API on jax 0.10 (``jax._src.pallas.mosaic_gpu.interpret.params``): kept here so a
    move is one line.
    """
    try:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    except ImportError:  # pragma: no cover - depends on the installed release
        return None
    return InterpretGPUParams()

"""Progressive Gradient Flow for high N:M sparsity.

Bambhaniya et al. (2024), "Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers".
Rather than cutting the gradient flow to pruned weights at once, restrict it progressively:

- MDGF (mask decay): forward weight ``w * (m + (1 - m) * delta(t))`` with ``delta`` linear
  ``max(0, 1 - c t)`` or exponential ``exp(-c t)``; backward straight-through to the dense ``w``.
- SDGF (structure decay): step the N:M pattern down over equal frames of the decay phase:
  ``sparsify``: (M-1):M -> M/2:M -> ... -> 2N:M; ``fine``: 8N:8M -> 4N:4M -> 2N:2M. As in the paper's
  code, the dense stage of the sequence is the warm-up and the final N:M is the fine-tune phase.

Phases: an optional dense warm-up (``warmup_steps``), the decay phase ending at ``end_step``, then
fine-tuning on the binary N:M mask (``delta = 0``: the forward is exactly N:M).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from sparsejax import masks as mk
from sparsejax import schedules
from sparsejax.algorithms.ste import nm_masks
from sparsejax.core import SparseAlgorithm
from sparsejax.forward import straight_through
from sparsejax.layout import Layout


def pgf(
    n: int = 1,
    m: int = 8,
    *,
    pgf_mode: str = "mdgf",
    pgf_decay: str = "linear",
    pgf_coef: float = 1e-4,
    sdgf_schedule: str = "sparsify",
    warmup_steps: int = 0,
    end_step: int | None = None,
    num_steps: int | None = None,
    nm_axis: int = -2,
    skip_indivisible: bool = False,
    seed: int = 0,
    **layout: Any,
) -> SparseAlgorithm:
    """PGF at ``n:m`` with ``pgf_mode`` ``mdgf`` (mask decay) or ``sdgf`` (structure decay); the decay
    phase ends at ``end_step`` (None: 75% of ``num_steps``)."""
    if not 0 < n < m:
        raise ValueError(f"n={n}, m={m}: allowed 0 < n < m")
    if pgf_mode not in ("mdgf", "sdgf"):
        raise ValueError(f"pgf_mode={pgf_mode!r}: allowed values are mdgf, sdgf")
    end_step = schedules.relative_step(end_step, num_steps, 0.75, "end_step")
    if not 0 <= warmup_steps <= end_step:
        raise ValueError(
            f"warmup_steps={warmup_steps}: allowed 0 <= warmup_steps <= end_step={end_step}"
        )
    lay = Layout(sparsity=1.0 - n / m, **{**layout, "distribution": "uniform"})

    def nm_of(params, pn: int, pm: int):
        return nm_masks(params, set(lay.per_leaf(params)), pn, pm, nm_axis, skip_indivisible)

    if pgf_mode == "mdgf":
        delta = schedules.pgf_decay(pgf_decay, pgf_coef, warmup_steps, end_step)
        # The decay ``delta(t)`` is the algorithm state; the forward uses ``w * (m + (1 - m) delta)``.
        return SparseAlgorithm(
            name="pgf",
            init_masks=lambda params, key: nm_of(params, n, m),
            refresh_masks=lambda new_params, masks, step, decay: nm_of(new_params, n, m),
            hard=False,
            forward=lambda params, state: mk.map_params(
                lambda msk, w: straight_through(w, msk, state.algo_state), state.masks, params
            ),
            init_state=lambda params, masks, key: jnp.asarray(delta(0), jnp.float32),
            update_state=lambda decay, grads, params, masks, step: jnp.asarray(
                delta(step), jnp.float32
            ),
            seed=seed,
        )

    frames = schedules.sdgf_decay_frames(n, m, sdgf_schedule)

    def masks_at(params, step):
        final, *decaying = [partial(nm_of, pn=pn, pm=pm) for pn, pm in [(n, m), *frames]]
        dense = lambda p: mk.map_sparse(jnp.ones_like, final(p))  # noqa: E731
        return jax.lax.switch(
            _phase(step, len(frames), warmup_steps, end_step), [dense, *decaying, final], params
        )

    return SparseAlgorithm(
        name="pgf",
        init_masks=lambda params, key: masks_at(params, 0),
        refresh_masks=lambda new_params, masks, step, algo_state: masks_at(new_params, step),
        hard=False,
        seed=seed,
    )


def _phase(step, num_frames: int, warmup_steps: int, end_step: int) -> jax.Array:
    """0 during warm-up (dense), 1..num_frames for the decay frames, num_frames + 1 from end_step on."""
    t = jnp.asarray(step)
    frame = 1 + schedules.frame_index(t, max(num_frames, 1), warmup_steps, end_step)
    frame = jnp.where((t >= end_step) | (num_frames == 0), num_frames + 1, frame)
    return jnp.where(t < warmup_steps, 0, frame)


def sdgf_pattern_at(
    step: int, n: int, m: int, sdgf_schedule: str, warmup_steps: int, end_step: int
) -> tuple[int, int] | None:
    """Host-side: the N:M pattern SDGF uses at ``step`` (None during the dense warm-up)."""
    frames = schedules.sdgf_decay_frames(n, m, sdgf_schedule)
    phase = int(_phase(step, len(frames), warmup_steps, end_step))
    return None if phase == 0 else ([*frames, (n, m)])[phase - 1]

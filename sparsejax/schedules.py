"""When masks change and by how much: update-step predicates and the schedules the algorithms follow.

Every predicate and schedule is a pure function of the step that works on Python ints (host-side logging)
and on traced int32 scalars (inside the jitted step). Where optax already has the curve we reuse it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

Step = int | jnp.ndarray
Predicate = Callable[[Step], bool | jnp.ndarray]


def never(step: Step) -> bool:
    """Masks never change (static sparsity, dense baseline)."""
    del step
    return False


def periodic(start_step: int, end_step: int, update_every: int) -> Predicate:
    """True on ``start <= t < end`` with ``(t - start) % update_every == 0``."""
    if update_every <= 0:
        raise ValueError(f"update_every={update_every}: allowed values are integers >= 1")
    if start_step < 0 or end_step < start_step:
        raise ValueError(
            f"start_step={start_step}, end_step={end_step}: allowed 0 <= start_step <= end_step"
        )

    def is_update(step: Step):
        return (step >= start_step) & (step < end_step) & ((step - start_step) % update_every == 0)

    return is_update


def one_shot(at_step: int) -> Predicate:
    """True only on ``at_step`` (one-shot pruning)."""
    return lambda step: step == at_step


def relative_step(value: int | None, num_steps: int | None, fraction: float, key: str) -> int:
    """``value``, or ``fraction`` of training when it is None (a paper's default relative to the
    training length, e.g. RigL's last mask update at 75% of the steps)."""
    if value is not None:
        return value
    if num_steps is None:
        raise ValueError(
            f"{key}=None: allowed an integer >= 0, or num_steps so that it defaults to "
            f"{fraction:.0%} of training"
        )
    return int(fraction * num_steps)


def last_update_step(start_step: int, end_step: int, update_every: int) -> int:
    """The final step on which a ``periodic`` predicate fires."""
    if end_step <= start_step:
        return start_step
    return start_step + ((end_step - 1 - start_step) // update_every) * update_every


def cubic_sparsity(
    initial: float, final: float, start_step: int, end_step: int, update_every: int
) -> optax.Schedule:
    """Zhu & Gupta (2017) cubic ramp ``s_f + (s_i - s_f) * (1 - p) ** 3``.

    Progress ``p`` runs from the first to the *last* update step inside ``[start, end)``, so the final
    update really reaches ``s_f`` (with ``p`` measured to ``end`` it would stop one interval short).
    """
    last = last_update_step(start_step, end_step, update_every)
    if last <= start_step:
        return optax.constant_schedule(final)
    return optax.polynomial_schedule(
        init_value=initial,
        end_value=final,
        power=3,
        transition_steps=last - start_step,
        transition_begin=start_step,
    )


def drop_fraction(
    kind: str, alpha: float | optax.Schedule, start_step: int, end_step: int
) -> optax.Schedule:
    """Fraction of actives to drop at an update: constant, or RigL's cosine ``alpha/2 (1 + cos(pi t/T))``.

    ``t`` counts from ``start_step`` and ``T = end_step - start_step``. A callable ``alpha`` is already
    the schedule (any optax schedule of the global step) and is returned as it is.
    """
    if callable(alpha):
        return alpha
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"drop_fraction={alpha}: allowed values are in [0, 1]")
    if kind == "constant":
        return optax.constant_schedule(alpha)
    if kind == "cosine":
        cos = optax.cosine_decay_schedule(alpha, decay_steps=max(end_step - start_step, 1))
        return lambda step: cos(jnp.maximum(step - start_step, 0))
    raise ValueError(f"drop_schedule={kind!r}: allowed values are cosine, constant")


def pgf_decay(kind: str, coef: float, warmup_steps: int, end_step: int) -> optax.Schedule:
    """MDGF's ``delta(t)``: 1 during warm-up, then ``max(0, 1 - c t)`` or ``exp(-c t)``, and 0 from
    ``end_step`` on (an exponential decay is cut to 0 there so fine-tuning is exactly N:M)."""
    if kind not in ("linear", "exp"):
        raise ValueError(f"pgf_decay={kind!r}: allowed values are linear, exp")
    if coef < 0:
        raise ValueError(f"pgf_coef={coef}: allowed values are >= 0")

    def delta(step: Step):
        t = jnp.maximum(jnp.asarray(step, jnp.float32) - warmup_steps, 0.0)
        d = jnp.maximum(0.0, 1.0 - coef * t) if kind == "linear" else jnp.exp(-coef * t)
        return jnp.where(jnp.asarray(step) >= end_step, 0.0, d)

    return delta


def sdgf_patterns(n: int, m: int, kind: str) -> list[tuple[int, int]]:
    """SDGF's step-down sequence of N:M patterns ending at ``n:m``.

    ``sparsify``: dense (m:m) -> (m-1):m -> m/2:m -> m/4:m -> ... -> n:m.
    ``fine``: 8n:8m -> 4n:4m -> 2n:2m -> n:m.
    """
    if kind == "fine":
        return [(8 * n, 8 * m), (4 * n, 4 * m), (2 * n, 2 * m), (n, m)]
    if kind != "sparsify":
        raise ValueError(f"sdgf_schedule={kind!r}: allowed values are sparsify, fine")
    seq = [(m, m)]
    if m - 1 > n:
        seq.append((m - 1, m))
    k = m // 2
    while k > n:
        if k < seq[-1][0]:
            seq.append((k, m))
        k //= 2
    seq.append((n, m))
    return seq


def sdgf_decay_frames(n: int, m: int, kind: str) -> list[tuple[int, int]]:
    """The patterns SDGF steps through *inside* the decay phase, as in the PGF paper and code: the dense
    stage is the warm-up and the final ``n:m`` is the fine-tune phase, so both are left out here."""
    return [p for p in sdgf_patterns(n, m, kind)[:-1] if p[0] != p[1]]


def frame_index(step: Step, num_frames: int, warmup_steps: int, end_step: int) -> jnp.ndarray:
    """Which of ``num_frames`` equal frames of ``[warmup, end)`` holds ``step`` (last frame after it)."""
    span = max(end_step - warmup_steps, 1)
    t = jnp.asarray(step, jnp.int32) - warmup_steps
    return jnp.clip((t * num_frames) // span, 0, num_frames - 1)

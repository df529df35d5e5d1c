"""The jitted train and eval steps, and the initial train state.

The train state is a plain dict pytree ``{params, model_state, opt_state, step, key}``: ``model_state``
holds mutable collections (BatchNorm ``batch_stats``; empty for stateless models), ``opt_state`` is the
``sj.sparsify`` state with the masks. The step's PRNG key is ``fold_in(key, step)``, never split in place,
so any step can be recomputed from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sparsejax as sj
from experiments.errors import ConfigError
from sparsejax.selection import leaf_paths, map_named

State = dict[str, Any]
Batch = dict[str, np.ndarray]


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape,
    seed: int,
    mask_params: bool = False,
    params: Mapping[str, Any] | None = None,
) -> State:
    """Fresh train state.

    ``tx.init`` is traced before anything compiles, so an N:M shape error surfaces first; it runs under jit
    because op-by-op mask creation compiles dozens of tiny programs (3x slower on CPU). ``mask_params``
    (masked-dense methods) zeroes the initial weights outside the masks, so training starts from the
    sparse network and the forward pass needs no mask multiply.

    ``params``: the initial params in place of the model's fresh ones, as a flat mapping leaf path
    (``sparsejax.selection.path_str``, e.g. ``"dense_0/kernel"``) -> array, one entry per leaf of the
    model's params with its shape and dtype (ConfigError otherwise). They are placed like the fresh
    ones, the optimizer state (masks included) is initialised from them, then ``mask_params`` applies
    as above. ``model_state`` and the PRNG key stay as a fresh init makes them.
    """
    key = jax.random.PRNGKey(seed)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, dummy, train=False))(jax.random.fold_in(key, 1))
    variables = dict(variables)
    params = variables.pop("params") if params is None else _given(variables.pop("params"), params)
    opt_state = jax.jit(tx.init)(params)
    if mask_params:
        params = jax.jit(sj.apply_masks)(params, sj.masks_of(opt_state))
    state = {
        "params": params,
        "model_state": variables,
        "opt_state": opt_state,
        "step": jnp.zeros((), jnp.int32),
        "key": jax.random.fold_in(key, 2),
    }
    return commit(state)


def _given(fresh: Any, values: Mapping[str, Any]) -> Any:
    """``fresh`` (params) with every leaf replaced by ``values[its path]``, placed like it."""
    extra = sorted(set(values) - set(leaf_paths(fresh)))
    if extra:
        raise ConfigError(f"initial params: the model has no leaf {extra[0]!r}")

    def one(name: str, leaf: Any) -> Any:
        if name not in values:
            raise ConfigError(f"initial params: no value for the model's leaf {name!r}")
        value = np.asarray(values[name])
        if value.shape != leaf.shape or value.dtype != leaf.dtype:
            raise ConfigError(
                f"initial params: leaf {name!r} is {value.dtype}{list(value.shape)}, "
                f"the model's {leaf.dtype}{list(leaf.shape)}"
            )
        return jax.device_put(value, leaf.sharding)

    return map_named(one, fresh)


def commit(state: State) -> State:
    """Place every leaf on this process's first device explicitly.

    jit keys its cache on whether inputs are committed to a device; fresh arrays are not, step outputs are,
    so without this the train step compiles twice (once for the initial state, once for every later one).
    """
    return jax.device_put(state, jax.local_devices()[0])


def make_steps(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mean: np.ndarray,
    std: np.ndarray,
    label_smoothing: float = 0.0,
    assume_masked: bool = False,
    compiler_options: dict[str, str] | None = None,
) -> tuple[Callable[[State, Batch], tuple[State, dict]], Callable[[State, Batch], dict]]:
    """``train_step(state, batch) -> (state, {loss, accuracy})`` and ``eval_step(state, batch) -> sums``.

    ``assume_masked``: params are kept exactly 0 outside the masks (see ``init_state(mask_params=)``).
    ``compiler_options``: XLA options both steps compile with (``kernels_pallas.xla_cpu``).
    """

    def forward(state: State, params, opt_state, images, train: bool, key):
        # uint8 on the wire, normalised on device; ``mean is None``: token ids, fed as they are
        x = images if mean is None else (images.astype(jnp.float32) / 255.0 - mean) / std
        model_state = state["model_state"]
        variables = {
            "params": sj.forward_params(params, opt_state, assume_masked=assume_masked),
            **model_state,
        }
        if train and model_state:  # BatchNorm: also returns the updated running statistics
            logits, new = model.apply(
                variables, x, train=True, mutable=list(model_state), rngs={"dropout": key}
            )
            return logits, dict(new)
        return model.apply(variables, x, train=train, rngs={"dropout": key}), model_state

    def train_step(state: State, batch: Batch):
        key = jax.random.fold_in(state["key"], state["step"])

        def loss_fn(params, opt_state):
            logits, model_state = forward(state, params, opt_state, batch["image"], True, key)
            loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
            return loss, (logits, model_state)

        # Gradients w.r.t. the params and the algorithm's own learned state (e.g. mask logits).
        grad_fn = sj.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, model_state)), (grads, algo_grads) = grad_fn(
            state["params"], state["opt_state"]
        )
        updates, opt_state = tx.update(
            grads, state["opt_state"], state["params"], algo_grads=algo_grads
        )
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "model_state": model_state,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "key": state["key"],
        }
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return new_state, {"loss": loss, "accuracy": accuracy}

    def eval_step(state: State, batch: Batch) -> dict[str, jax.Array]:
        logits, _ = forward(
            state, state["params"], state["opt_state"], batch["image"], False, state["key"]
        )
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        # Per-example means (sequence models: over tokens), so padding rows mask out whole examples.
        loss, correct = (v.reshape(v.shape[0], -1).mean(-1) for v in (loss, correct))
        return {
            "loss": jnp.sum(loss * mask),
            "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask),
        }

    # CPU cannot donate buffers (and warns); elsewhere donation halves the state's peak memory.
    donate = (0,) if jax.default_backend() != "cpu" else ()
    train = jax.jit(train_step, donate_argnums=donate, compiler_options=compiler_options)
    return train, jax.jit(eval_step, compiler_options=compiler_options)


def evaluate(eval_step: Callable, state: State, batches: Iterable[Batch]) -> dict[str, float]:
    """Mean loss and accuracy over ``batches`` (rows with ``mask == False`` are padding)."""
    sums = [eval_step(state, batch) for batch in batches]
    if not sums:
        return {"loss": float("nan"), "accuracy": float("nan")}
    total = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *sums))
    count = max(float(total["count"]), 1.0)
    return {"loss": float(total["loss"]) / count, "accuracy": float(total["correct"]) / count}

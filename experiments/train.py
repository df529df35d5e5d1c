r"""Train an image classifier with a sparse-training algorithm.

    python -m experiments.train --config=configs/rigl_resnet.py[:PRESET] [--workdir=DIR] \
        [--config.KEY=VALUE ...]

Re-running the same command on the same workdir resumes from the latest checkpoint; an interrupted and
resumed run ends with parameters bit-identical to an uninterrupted one (batch ``t`` and the PRNG key of
step ``t`` are pure functions of the seed and ``t``). SIGTERM saves a checkpoint, then exits with 143.
Workdir files: config.json, metrics.jsonl, masks/, checkpoints/, summary.json (see docs/experiments.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

import sparsejax as sj
from experiments import (
    checkpointing,
    cli,
    data,
    metrics_log,
    models,
    multihost,
    optim,
    steps,
    text,
    validate,
)
from experiments.errors import ConfigError, config_section
from kernels_pallas import compressed_training, xla_cpu


class _Preemption:
    """While active, SIGTERM only sets a flag that the loop checks after every step (save, then exit).

    Signal handlers can only be installed from the main thread; elsewhere (e.g. a notebook worker
    thread) SIGTERM keeps its default behaviour.
    """

    def __enter__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame):
        self.requested = True


def _mean(rows: list[dict]) -> dict[str, float]:
    rows = jax.device_get(rows)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    init_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume) ``config`` in ``workdir``; returns the final metrics, also in summary.json.

    ``init_params``: start from these params instead of a fresh init, as a flat mapping leaf path
    (``sparsejax.selection.path_str``) -> array (see ``experiments.steps.init_state(params=)``);
    masked-dense algorithms mask them. Only step 0 sees them: a resumed run restores its checkpoint.
    """
    # Non-partitionable threefry compiles ~5x faster on CPU; partitionable only matters for sharded RNG.
    with (
        jax.threefry_partitionable(bool(config.threefry_partitionable)),
        _Preemption() as preemption,
        contextlib.ExitStack() as cleanup,  # closes the checkpointer on every exit path
    ):
        return _train_and_evaluate(config, workdir, preemption, cleanup, init_params)


def _train_and_evaluate(
    config,
    workdir: str,
    preemption: _Preemption,
    cleanup: contextlib.ExitStack,
    init_params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    num_steps = config.num_steps
    with config_section("sparsity."):
        algo = sj.from_config(config.sparsity, num_steps=num_steps)
    pipeline = data.build(config)
    model = models.build(config.model, pipeline.info.num_classes)
    with config_section("sparsity."):  # e.g. the compressed form for compressed block layers
        algo = models.sparse_algorithm(model, config, pipeline.image_shape) or algo
    inner, lr_fn = optim.build(config.optimizer, num_steps)
    tx = sj.sparsify(inner, algo, track_metrics=True)
    # Masks are created here, so an N:M shape error surfaces before the train step compiles.
    with config_section("sparsity."):
        state = steps.init_state(
            model, tx, pipeline.image_shape, config.seed, algo.hard, params=init_params
        )
    models.check_masks(model, sj.masks_of(state["opt_state"]))  # e.g. block_mlp: nnz == mask blocks

    options = xla_cpu.compiler_options(config.xla_cpu_dots)
    train_step, eval_step = steps.make_steps(
        model,
        tx,
        pipeline.mean,
        pipeline.std,
        config.optimizer.label_smoothing,
        # params start masked (init_state) and stay so; an algorithm's own forward hook still runs
        assume_masked=algo.hard and algo.forward is sj.masked_forward,
        compiler_options=options,
    )
    state, train_step, eval_step = multihost.wire(config, state, train_step, eval_step, options)

    os.makedirs(os.path.join(workdir, "masks"), exist_ok=True)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    cleanup.enter_context(ckpt)
    data_state = None
    # After ``wire``: the restore target carries the mesh shardings, so each process reads only its
    # own shards (never a whole leaf onto one device). Unreadable newer checkpoints are moved aside.
    if (restored := ckpt.restore_latest(state)) is not None:
        _, state, data_state = restored
        if multihost.mesh_from_config(config) is None:
            state = steps.commit(state)
    start = int(state["step"])
    summary_path = os.path.join(workdir, "summary.json")
    if start >= num_steps and os.path.exists(summary_path):  # a finished run: nothing to do
        ckpt.close()
        with open(summary_path) as f:
            return {**json.load(f), "preempted": False}
    lead = jax.process_index() == 0  # multi-process runs: only process 0 writes files and logs
    if lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    log = metrics_log.MetricsLog(workdir, config, start, enabled=lead)

    # Compressed block layers: snapshots, sparsity and mask metrics describe the masked-dense
    # equivalent network, so such runs read (and plot) like masked-dense ones.
    compressed = compressed_training.compressed_state(state["opt_state"]) is not None
    as_masked_dense = jax.jit(compressed_training.masked_dense)

    def params_and_masks() -> tuple[Any, Any]:
        if compressed:
            return as_masked_dense(state["params"], state["opt_state"])
        return state["params"], sj.masks_of(state["opt_state"])

    def snapshot_masks(step: int) -> None:
        masks = multihost.to_host(params_and_masks()[1])  # a collective: every process
        if lead:
            sj.save_masks(os.path.join(workdir, "masks", f"step_{step:07d}.npz"), masks, step=step)

    def sparsity() -> tuple[float, dict[str, float]]:
        return metrics_log.network_sparsity(*params_and_masks())

    def run_eval(step: int) -> dict[str, float]:
        t = time.perf_counter()
        result = steps.evaluate(eval_step, state, pipeline.eval_batches())
        row = {"step": step, "split": "eval", **result, "sparsity": sparsity()[0]}
        row.update(lr=float(lr_fn(max(step - 1, 0))), step_time_s=time.perf_counter() - t)
        if not log.has(step, "eval"):
            log.write(row)
        return result

    if compressed:  # SAD and ITOP in elements of the dense-equivalent kernels
        mask_stats, itop = jax.jit(compressed_training.stats), compressed_training.itop
    else:
        mask_stats, itop = jax.jit(lambda o: sj.sparse_state(o).stats), sj.metrics.itop

    def log_train(step: int, window: list, elapsed: float, mask_update: bool) -> dict[str, float]:
        """Write the train row for update ``step`` (0-based) averaging ``window``; returns the means."""
        means = _mean(window)
        total, per_leaf = sparsity()
        row = {"step": step + 1, "split": "train", **means, "sparsity": total}
        # The first step of a process is mostly compilation: it is timed apart, as first_step_s.
        has_first = step + 1 - len(window) == start
        timed = len(window) - has_first  # steps that `elapsed` covers
        row.update(lr=float(lr_fn(step)), step_time_s=elapsed / timed if timed else first_step_s)
        if has_first:
            row["first_step_s"] = first_step_s
        if mask_update or algo.refresh_masks is not None:  # the STE family's masks move every step
            row.update(jax.device_get(mask_stats(state["opt_state"])))
            row["itop"] = float(itop(state["opt_state"]))
        if mask_update:
            snapshot_masks(step + 1)
        log.write(row, per_leaf)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", sparsity=f"{total:.3f}",
            steps_per_s=f"{1 / max(row['step_time_s'], 1e-9):.2f}",
        )  # fmt: skip
        return means

    if start == 0:
        snapshot_masks(0)
    train_iter = pipeline.train_iterator(data_state)
    bar = tqdm.tqdm(total=num_steps, initial=start, disable=not sys.stderr.isatty(), unit="step")
    window, train_metrics, first_step_s = [], {}, None
    # A window's train time: `window_s` counted before a pause (eval, save) plus the clock since
    # `t_window`, read only once the dispatched steps have finished (JAX dispatches asynchronously):
    # one sync per train row, eval or save, never per step.
    window_s = 0.0
    t_window = t_start = time.perf_counter()

    def finished() -> float:
        """The clock once every train step dispatched so far has finished."""
        jax.block_until_ready(state)
        return time.perf_counter()

    # `step` counts the updates done before this one, as SparseState.step and is_update_step do.
    for step in range(start, num_steps):
        state, metrics = train_step(state, next(train_iter))
        window.append(metrics)
        done = step + 1
        bar.update(1)
        if first_step_s is None:
            jax.block_until_ready(metrics)
            first_step_s = time.perf_counter() - t_start
            t_window = time.perf_counter()
        mask_update = bool(algo.is_update_step(step))
        if done % config.log_every == 0 or mask_update or done == num_steps:
            elapsed = window_s + finished() - t_window
            train_metrics = log_train(step, window, elapsed, mask_update)
            window, window_s, t_window = [], 0.0, time.perf_counter()
        evaluating = config.eval_every and done % config.eval_every == 0 and done < num_steps
        saving = config.checkpoint_every and done % config.checkpoint_every == 0
        paused = evaluating or saving or preemption.requested
        if paused:  # evals and saves are not train time: the window's clock stops meanwhile
            window_s += finished() - t_window
        if evaluating:
            run_eval(done)
        if saving or preemption.requested:
            ckpt.save(done, state, train_iter.get_state())
        if preemption.requested:
            break
        if paused:
            t_window = time.perf_counter()
    bar.close()
    result: dict[str, Any] = {"step": int(state["step"]), "preempted": preemption.requested}
    if not preemption.requested:
        ckpt.save(result["step"], state, train_iter.get_state())
        snapshot_masks(result["step"])
        eval_metrics = run_eval(result["step"])
        result.update({f"train_{k}": v for k, v in train_metrics.items()})
        result.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        result.update(sparsity=sparsity()[0], runtime_s=time.perf_counter() - t_start)
        if config.data.name in text.SOURCES and lead:  # perplexity, average parameter count
            log.close()
            result.update(text.lm_metrics(workdir, eval_metrics["loss"], state["params"]))
        result["first_step_s"] = first_step_s
        if lead:
            with open(summary_path, "w") as f:
                json.dump({k: v for k, v in result.items() if k != "preempted"}, f, indent=2)
    log.close()
    ckpt.close()
    return result


def default_workdir(config_flag: Any) -> str:
    """``workdirs/<config file stem>[_<preset>]`` under the current directory."""
    path, _, preset = config_flags.get_config_filename(config_flag).partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("workdirs", f"{name}_{preset}" if preset else name)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; pass settings as --config.KEY=VALUE")
    logging.set_verbosity(logging.WARNING)  # orbax and grain are chatty at INFO
    config = flags.FLAGS.config
    if config is None:
        cli.fail("--config: required, e.g. --config=configs/rigl_resnet.py")
    cli.config_file(flags.FLAGS["config"])
    try:  # an unreadable config file surfaces here as OSError
        workdir = flags.FLAGS.workdir or default_workdir(flags.FLAGS["config"])
        validate.check(config, workdir)
    except (ConfigError, OSError) as e:
        cli.fail(str(e))
    result = cli.run(
        lambda: train_and_evaluate(config, workdir),
        workdir,
        (ConfigError, checkpointing.CheckpointError),
        "re-run the same command to resume from the latest checkpoint",
    )
    if result.pop("preempted"):
        sys.exit(128 + signal.SIGTERM)
    print(json.dumps(result))


def define_flags() -> None:
    """The CLI flags; defined only when run as a program, so importing this module defines none."""
    # No default config: ml_collections would load it at definition time, before errors are reported.
    config_flags.DEFINE_config_file(
        "config", None, "Config file[:preset], e.g. configs/rigl_resnet.py."
    )
    flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<config>[_<preset>]).")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)

r"""Input pipeline vs train step throughput, and time to first step, for training configs.

    python benchmarks/input_pipeline.py [--cases=mnist5k,cifar10_fixture] [--steps=30 --batches=200]
    python benchmarks/input_pipeline.py --config=configs/rigl_resnet.py[:PRESET] [--config.KEY=VALUE]

A case is a config with the default model of that config on one dataset (``CASES``; ``--config`` runs
one config of your own instead). For each: examples/s the grain pipeline produces (host, uint8 batches),
examples/s the jitted train step consumes (one device-resident batch reused, so no input cost), and both
together as the training loop runs them, measured interleaved in ``--rounds`` rounds so machine load
hits all three alike; the ratio is the median of the per-round ratios. Also the time to the first step
(state init + compile + one step) and the compile time on its own. Writes
benchmarks/results/input_pipeline.json and .md. The input pipeline is fast enough when the train step
alone is at least 3x slower than producing its input.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import sys
import time

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sparsejax as sj  # noqa: E402
from experiments import cli, data, models, optim, steps  # noqa: E402
from experiments.errors import ConfigError  # noqa: E402

# name -> (config file[:preset], overrides): each config's default model on one dataset.
CASES = {
    "mnist5k": ("configs/rigl_resnet.py", {}),
    # The full 60k-image Fashion-MNIST from its idx files (apt-get install dataset-fashion-mnist).
    "fashion_mnist": ("configs/rigl_resnet.py", {"data.name": "fashion_mnist"}),
    # A fast step: the compressed block-sparse MLP (block RigL, 90% of 16x16 blocks), batch 128.
    "block_rigl_mlp": ("configs/block_rigl_mlp.py", {}),
    # WRN-22-2 on the committed CIFAR-10 fixture: PNG Image features decoded by TFDS (PIL).
    "cifar10_fixture": (
        "configs/rigl_resnet.py:cifar10",
        {"data.tfds_data_dir": os.path.join(ROOT, "tests", "data")},
    ),
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config of your own to benchmark instead of --cases."
)
_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to benchmark: {', '.join(CASES)}.")
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches timed for the input pipeline alone.")
_STEPS = flags.DEFINE_integer(
    "steps", 30, "Steps timed for the train step alone and the full loop."
)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 5, "Interleaved rounds the batches and steps are split into."
)
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Directory for input_pipeline.{json,md}.")


def case_config(name: str) -> ml_collections.ConfigDict:
    """The config of case ``name`` (one clear error for an unknown one)."""
    if name not in CASES:
        raise ValueError(f"--cases: unknown case {name!r}; allowed: {', '.join(CASES)}")
    spec, overrides = CASES[name]
    path, _, preset = spec.partition(":")
    module = importlib.import_module(os.path.splitext(path)[0].replace("/", "."))
    config = module.get_config(preset or None)
    config.update_from_flattened_dict(overrides)
    return config


def _time(fn, n: int, finish=lambda: None) -> float:
    """Seconds for ``n`` calls of ``fn`` followed by ``finish`` (to wait for async device work)."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    finish()
    return time.perf_counter() - start


def benchmark(config, n_batches: int, n_steps: int, n_rounds: int) -> dict:
    """All measurements for ``config`` as a flat dict; the timed parts interleaved in rounds."""
    bs = config.batch_size
    pipeline = data.build(config)
    it = pipeline.train_iterator()
    for _ in range(5):  # start the prefetch threads
        next(it)

    t0 = time.perf_counter()
    algo = sj.from_config(config.sparsity, num_steps=config.num_steps)
    model = models.build(config.model, pipeline.info.num_classes)
    algo = models.sparse_algorithm(model, config, pipeline.image_shape) or algo  # compressed layers
    tx = sj.sparsify(optim.build(config.optimizer, config.num_steps)[0], algo)
    state = steps.init_state(model, tx, pipeline.image_shape, config.seed)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    train_step, _ = steps.make_steps(model, tx, pipeline.mean, pipeline.std)
    batch = jax.device_put(next(it))
    t1 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t1
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - t0

    def step_alone():
        nonlocal state
        state, _ = compiled(state, batch)

    def loop_step():
        nonlocal state
        state, _ = compiled(state, next(it))

    finish = lambda: jax.block_until_ready(state)
    per_round = lambda n: max(1, n // n_rounds)
    input_s = step_s = loop_s = 0.0
    ratios = []
    buffered = 2 * pipeline.num_threads  # what the prefetch threads refill while the step runs
    for _ in range(n_rounds):  # input, step, loop in turn, so load drifts hit each alike
        for _ in range(buffered):  # untimed: time only batches produced while timing
            next(it)
        t_in = _time(lambda: next(it), per_round(n_batches))
        t_step = _time(step_alone, per_round(n_steps), finish)
        loop_s += _time(loop_step, per_round(n_steps), finish)
        input_s, step_s = input_s + t_in, step_s + t_step
        ratios.append((per_round(n_batches) / t_in) / (per_round(n_steps) / t_step))
    n_batches, n_steps = n_rounds * per_round(n_batches), n_rounds * per_round(n_steps)
    return {
        "model": config.model.name,
        "data": config.data.name,
        "algorithm": config.sparsity.algorithm,
        "batch_size": bs,
        "input_examples_per_s": n_batches * bs / input_s,
        "train_step_examples_per_s": n_steps * bs / step_s,
        "train_loop_examples_per_s": n_steps * bs / loop_s,
        "input_over_step_ratio": statistics.median(ratios),
        "input_over_step_ratio_range": [min(ratios), max(ratios)],
        "rounds": n_rounds,
        "train_step_ms": 1e3 * step_s / n_steps,
        "input_batch_ms": 1e3 * input_s / n_batches,
        "init_s": init_s,
        "compile_s": compile_s,
        "time_to_first_step_s": first_step_s,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "jax": f"{jax.__version__} ({jax.default_backend()})",
    }


_ROWS = (  # (label, format of one case's results)
    ("model, batch", "{model}, {batch_size}"),
    (
        "input pipeline alone",
        "{input_examples_per_s:,.0f} examples/s ({input_batch_ms:.1f} ms/batch)",
    ),
    (
        "train step alone",
        "{train_step_examples_per_s:,.0f} examples/s ({train_step_ms:.1f} ms/step)",
    ),
    ("train loop (both)", "{train_loop_examples_per_s:,.0f} examples/s"),
    ("input / step throughput (median of rounds)", "{input_over_step_ratio:.1f}x (>= 3x: {ok})"),
    ("per-round ratio range", "{lo:.1f}x - {hi:.1f}x over {rounds} rounds"),
    ("state init (params + masks)", "{init_s:.1f} s"),
    ("compile of the train step", "{compile_s:.1f} s"),
    ("time to first step (init + compile + step)", "{time_to_first_step_s:.1f} s"),
)


def write(results: dict[str, dict], out_dir: str) -> None:
    """``input_pipeline.{json,md}`` in ``out_dir``: one entry / column per case."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "input_pipeline.json"), "w") as f:
        json.dump(results, f, indent=2)
    cells = {}
    for name, r in results.items():
        lo, hi = r["input_over_step_ratio_range"]
        ok = "yes" if r["input_over_step_ratio"] >= 3 else "NO"
        cells[name] = [fmt.format(**r, lo=lo, hi=hi, ok=ok) for _, fmt in _ROWS]
    last = list(results.values())[-1]
    lines = [
        "# Input pipeline vs train step",
        "",
        f"{last['machine']}; jax {last['jax']}; cases run one after another in one process.",
        "",
        "| measurement | " + " | ".join(f"`{n}`: {r['config']}" for n, r in results.items()) + " |",
        "| --- |" + " --- |" * len(results),
    ]
    for i, (label, _) in enumerate(_ROWS):
        lines.append(f"| {label} | " + " | ".join(c[i] for c in cells.values()) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "input_pipeline.md"), "w") as f:
        f.write(md)
    print(md)


def main(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is not None:
        spec = config_flags.get_config_filename(flags.FLAGS["config"])
        cases = {spec: _CONFIG.value}
    else:
        try:
            cases = {name: case_config(name) for name in _CASES.value}
        except ValueError as e:
            cli.fail(str(e))
    results = {}
    for name, config in cases.items():
        with jax.threefry_partitionable(bool(config.threefry_partitionable)):
            try:
                r = benchmark(config, _BATCHES.value, _STEPS.value, _ROUNDS.value)
            except ConfigError as e:  # e.g. a dataset that is not there: one line
                cli.fail(f"{name}: {e}")
        results[name] = {"config": CASES[name][0] if name in CASES else name, **r}
        print(f"{name}: input/step {r['input_over_step_ratio']:.1f}x", flush=True)
    write(results, _OUT.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)

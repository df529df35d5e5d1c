r"""Input pipeline vs train step throughput, and time to first step, for a training config.

    python benchmarks/input_pipeline.py [--config=configs/rigl_resnet.py[:PRESET]] [--config.KEY=VALUE]

Measures, each alone: examples/s the grain pipeline produces (host, uint8 batches), examples/s the
jitted train step consumes (one device-resident batch reused, so no input cost), and both together as
the training loop runs them. Also the time to the first step (state init + compile + one step) and the
compile time on its own. Writes benchmarks/results/input_pipeline.json and .md. The input pipeline is
fast enough when the train step alone is at least 3x slower than producing its input.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sparsejax as sj  # noqa: E402
from experiments import cli, data, models, optim, steps  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/rigl_resnet.py", "Config to benchmark."
)
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches timed for the input pipeline alone.")
_STEPS = flags.DEFINE_integer(
    "steps", 30, "Steps timed for the train step alone and the full loop."
)
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Directory for input_pipeline.{json,md}.")


def _time(fn, n: int, finish=lambda: None) -> float:
    """Seconds for ``n`` calls of ``fn`` followed by ``finish`` (to wait for async device work)."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    finish()
    return time.perf_counter() - start


def benchmark(config, n_batches: int, n_steps: int) -> dict:
    """All measurements for ``config`` as a flat dict."""
    bs = config.batch_size
    pipeline = data.build(config)
    it = pipeline.train_iterator()
    for _ in range(5):  # start the prefetch threads
        next(it)
    input_s = _time(lambda: next(it), n_batches)

    t0 = time.perf_counter()
    algo = sj.from_config(config.sparsity, num_steps=config.num_steps)
    model = models.build(config.model, pipeline.info.num_classes)
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

    step_s = _time(step_alone, n_steps, lambda: jax.block_until_ready(state))

    def loop_step():
        nonlocal state
        state, _ = compiled(state, next(it))

    loop_s = _time(loop_step, n_steps, lambda: jax.block_until_ready(state))
    input_rate, step_rate, loop_rate = (
        n_batches * bs / input_s,
        n_steps * bs / step_s,
        n_steps * bs / loop_s,
    )
    return {
        "model": config.model.name,
        "data": config.data.name,
        "algorithm": config.sparsity.algorithm,
        "batch_size": bs,
        "input_examples_per_s": input_rate,
        "train_step_examples_per_s": step_rate,
        "train_loop_examples_per_s": loop_rate,
        "input_over_step_ratio": input_rate / step_rate,
        "train_step_ms": 1e3 * step_s / n_steps,
        "input_batch_ms": 1e3 * input_s / n_batches,
        "init_s": init_s,
        "compile_s": compile_s,
        "time_to_first_step_s": first_step_s,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "jax": f"{jax.__version__} ({jax.default_backend()})",
    }


def write(results: dict, out_dir: str, config_spec: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "input_pipeline.json"), "w") as f:
        json.dump({"config": config_spec, **results}, f, indent=2)
    ok = "yes" if results["input_over_step_ratio"] >= 3 else "NO"
    md = f"""# Input pipeline vs train step (`{config_spec}`)

{results["model"]} on {results["data"]}, {results["algorithm"]}, batch {results["batch_size"]};
{results["machine"]}; jax {results["jax"]}.

| measurement | value |
| --- | --- |
| input pipeline alone | {results["input_examples_per_s"]:,.0f} examples/s ({results["input_batch_ms"]:.1f} ms/batch) |
| train step alone | {results["train_step_examples_per_s"]:,.0f} examples/s ({results["train_step_ms"]:.1f} ms/step) |
| train loop (both) | {results["train_loop_examples_per_s"]:,.0f} examples/s |
| input / step throughput | {results["input_over_step_ratio"]:.1f}x (>= 3x: {ok}) |
| state init (params + masks) | {results["init_s"]:.1f} s |
| compile of the train step | {results["compile_s"]:.1f} s |
| time to first step (init + compile + step) | {results["time_to_first_step_s"]:.1f} s |
"""
    with open(os.path.join(out_dir, "input_pipeline.md"), "w") as f:
        f.write(md)
    print(md)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    with jax.threefry_partitionable(bool(config.threefry_partitionable)):
        results = benchmark(config, _BATCHES.value, _STEPS.value)
    write(results, _OUT.value, config_flags.get_config_filename(flags.FLAGS["config"]))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)

r"""Run every point of a config's sweep locally, then summarise; or export it as a W&B sweep.

    python -m experiments.sweep --config=configs/rigl_resnet.py[:PRESET] --workdir=DIR [--parallel=N] \
        [--config.KEY=VALUE ...] [--export=wandb] [--point=NAME]

A config defines its sweep with a module-level ``get_sweep(arg=None)`` returning a list of override dicts
(``{"sparsity.sparsity": 0.9, ...}``, big_vision style). Each point runs ``experiments.train`` in
``DIR/<point name>/`` with the common ``--config.*`` overrides plus its own; finished points (those with a
``summary.json``) are skipped, so re-running a sweep resumes it. ``DIR/summary.csv`` and ``DIR/summary.md``
collect the final metrics. ``--export=wandb`` writes ``DIR/wandb_sweep.yaml`` whose runs call this module
with ``--point=NAME``, i.e. exactly the same points and workdirs, under ``wandb agent``.
"""

from __future__ import annotations

import concurrent.futures
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.errors import ConfigError
from experiments.workdir import ALLOWED as WORKDIR_ALLOWED
from experiments.workdir import check_workdir

SUMMARY_KEYS = (
    "step",
    "eval_accuracy",
    "eval_loss",
    "train_accuracy",
    "train_loss",
    "sparsity",
    "runtime_s",
)


def load_points(config_spec: str) -> list[dict[str, Any]]:
    """The override dicts of ``get_sweep(arg)`` in the config file named by ``path[:arg]``."""
    path, _, arg = config_spec.partition(":")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"--config={config_spec}: {path} defines no get_sweep(arg=None)")
    points = module.get_sweep(arg or None)
    if not points or not all(isinstance(p, dict) and p for p in points):
        raise ConfigError(
            f"--config={config_spec}: get_sweep() must return a non-empty list of non-empty dicts"
        )
    return points


def check_points(points: list[dict[str, Any]], config) -> None:
    """Every override must name an existing, non-dict config key."""
    for i, point in enumerate(points):
        for key, value in point.items():
            node = config
            for part in key.split("."):
                if not hasattr(node, "keys") or part not in node:
                    raise ConfigError(f"sweep point {i}: config.{key} does not exist")
                node = node[part]
            if isinstance(value, dict):
                raise ConfigError(
                    f"sweep point {i}: config.{key} is a dict; sweep its scalar keys instead"
                )


def point_names(points: list[dict[str, Any]]) -> list[str]:
    """Readable unique directory names: ``key=value`` pairs by last key component, full keys on clashes."""

    def name(point: dict[str, Any], short: bool) -> str:
        parts = [f"{k.rsplit('.', 1)[-1] if short else k}={v}" for k, v in point.items()]
        return re.sub(r"[^A-Za-z0-9_.=,+-]", "", ",".join(parts))

    names = [name(p, short=True) for p in points]
    if len(set(names)) < len(names):
        names = [name(p, short=False) for p in points]
    if len(set(names)) < len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def _flag_value(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, (list, tuple)) else str(value)


def train_command(config_spec: str, workdir: str, overrides: dict[str, Any]) -> list[str]:
    """The ``experiments.train`` command line for one point."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={config_spec}",
        f"--workdir={workdir}",
    ]
    return cmd + [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]


def run_point(config_spec: str, workdir: str, overrides: dict[str, Any]) -> str:
    """Run one point to completion (or skip it if finished); returns its status."""
    if os.path.exists(os.path.join(workdir, "summary.json")):
        return "skipped (finished)"
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "train.log"), "a") as log:
        proc = subprocess.run(
            train_command(config_spec, workdir, overrides), stdout=log, stderr=subprocess.STDOUT
        )
    return "done" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see train.log)"


def write_summary(
    sweep_dir: str, names: list[str], points: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Collect each point's summary.json into summary.csv and summary.md."""
    keys = sorted({k for p in points for k in p})
    rows = []
    for name, point in zip(names, points):
        path = os.path.join(sweep_dir, name, "summary.json")
        final = json.load(open(path)) if os.path.exists(path) else {}
        row = {"point": name, **{k: point.get(k, "") for k in keys}}
        row.update({k: final.get(k, "") for k in SUMMARY_KEYS})
        row["status"] = "finished" if final else "missing"
        rows.append(row)
    columns = list(rows[0])
    with open(os.path.join(sweep_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    with open(os.path.join(sweep_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


def export_wandb(sweep_dir: str, config_spec: str, common: dict[str, Any], names, points) -> str:
    """Write ``wandb_sweep.yaml``: a grid over point names; each run is ``sweep --point=NAME``."""
    import yaml

    common = {"wandb.mode": "online", **common}
    command = ["${env}", "${interpreter}", "-m", "experiments.sweep", f"--config={config_spec}"]
    command += [f"--workdir={os.path.abspath(sweep_dir)}"]
    command += [f"--config.{k}={_flag_value(v)}" for k, v in common.items()] + ["${args}"]
    spec = {
        "program": "experiments/train.py",
        "name": os.path.basename(os.path.abspath(sweep_dir)),
        "method": "grid",
        "metric": {"name": "eval/accuracy", "goal": "maximize"},
        "parameters": {"point": {"values": list(names)}},
        "command": command,
    }
    path = os.path.join(sweep_dir, "wandb_sweep.yaml")
    with open(path, "w") as f:
        f.write("# Points (each is `--config.KEY=VALUE` overrides of the base config):\n")
        for name, point in zip(names, points):
            f.write(f"#   {name}: {json.dumps(point)}\n")
        f.write("# Run: wandb sweep wandb_sweep.yaml && wandb agent <sweep id>\n")
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS.workdir:
        cli.fail(f"--workdir: required; {WORKDIR_ALLOWED}")
    if flags.FLAGS.config is None:
        cli.fail("--config: required, e.g. --config=configs/rigl_resnet.py")
    spec = cli.config_file(flags.FLAGS["config"])
    common = config_flags.get_override_values(flags.FLAGS["config"])
    sweep_dir = flags.FLAGS.workdir
    try:
        points = load_points(spec)
        check_points(points, flags.FLAGS.config)
        check_workdir(sweep_dir)
    except (ConfigError, OSError) as e:
        cli.fail(str(e))
    names = point_names(points)
    os.makedirs(sweep_dir, exist_ok=True)  # after every check; parents included
    if flags.FLAGS.export == "wandb":
        print(export_wandb(sweep_dir, spec, common, names, points))
        return
    todo = list(zip(names, points))
    if flags.FLAGS.point is not None:
        todo = [(n, p) for n, p in todo if n == flags.FLAGS.point]
        if not todo:
            cli.fail(f"--point={flags.FLAGS.point}: no such point; allowed: {', '.join(names)}")
    with concurrent.futures.ThreadPoolExecutor(flags.FLAGS.parallel) as pool:
        futures = {
            name: pool.submit(run_point, spec, os.path.join(sweep_dir, name), {**common, **point})
            for name, point in todo
        }
        for name, future in futures.items():
            print(f"{name}: {future.result()}", flush=True)
    rows = write_summary(sweep_dir, names, points)
    print(open(os.path.join(sweep_dir, "summary.md")).read(), end="")
    if any(r["status"] != "finished" for r in rows if flags.FLAGS.point in (None, r["point"])):
        sys.exit(1)


def define_flags() -> None:
    """The CLI flags; defined only when run as a program, so importing this module defines none."""
    config_flags.DEFINE_config_file("config", None, "Config file[:preset] defining get_sweep().")
    flags.DEFINE_string("workdir", None, "Sweep directory; each point runs in DIR/<point>/.")
    flags.DEFINE_integer("parallel", 1, "Points run at the same time.", lower_bound=1)
    flags.DEFINE_enum("export", "", ["", "wandb"], "Write a sweep file instead of running.")
    flags.DEFINE_string("point", None, "Run only the point with this name (for `wandb agent`).")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)

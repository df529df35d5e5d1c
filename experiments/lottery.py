r"""Lottery tickets: iterative magnitude pruning with weight rewinding, as rounds of ordinary runs.

    python -m experiments.lottery --config=configs/lottery.py [--workdir=DIR] [--config.KEY=VALUE ...]

Frankle & Carbin (2019), "The Lottery Ticket Hypothesis"; rewinding to step ``k`` instead of the
initialisation: Frankle et al. (2020), "Linear Mode Connectivity and the Lottery Ticket Hypothesis".

Round 0 trains the dense network. Each later round ``r`` keeps the ``round(N (1 - p)^r)`` weights of
largest ``|w|`` among the survivors of round ``r - 1`` (``N``: the prunable weights, ``p``:
``config.lottery.prune_fraction``; one global threshold over all prunable leaves), rewinds the survivors
to their values after ``config.lottery.rewind_step`` updates of round 0 (0: the initialisation), and
retrains with that mask fixed (the ``lottery_ticket`` algorithm of ``experiments.tickets``). So round
``r`` has sparsity ``1 - (1 - p)^r`` exactly (up to rounding one weight).

Each round is an ordinary ``experiments.train`` run in ``DIR/round_<r>/`` (config.json, metrics.jsonl,
masks/, checkpoints/, summary.json); ``DIR/round_<r>/ticket.npz`` is its mask (``sj.save_masks``),
``DIR/rewind.npz`` the rewind point, ``DIR/lottery.json`` the summary across rounds. Re-running the same
command skips finished rounds (those with a summary.json) and resumes the unfinished one from its latest
checkpoint; the result is bit-identical to an uninterrupted run.

How the rewind point is taken and put back, exactly and resumably:

- Round 0 runs ``lottery_ticket`` without a mask (dense) and ``record_rewind=True``: its algorithm state
  holds the params after update ``rewind_step``, so every checkpoint carries them. When round 0 is done,
  they are read from its final checkpoint into ``DIR/rewind.npz``.
- Round ``r >= 1`` starts from ``rewind * mask``: ``train_and_evaluate(init_params=)`` puts those params
  in the initial state (then masks them by the run's own masks). Resuming restores the checkpoint over
  that state as usual, so they only matter at step 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from typing import Any

import ml_collections
from absl import app, flags, logging

import sparsejax as sj
from experiments import checkpointing, cli, tickets, train, validate
from experiments.errors import ConfigError
from experiments.tickets import NAME, Flat

REWIND = "rewind.npz"
TICKET = "ticket.npz"
SUMMARY = "lottery.json"


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def check(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for an invalid ``config.lottery`` (or a starting algorithm it cannot use)."""
    if "lottery" not in config:
        raise ConfigError("config.lottery: missing; start from configs/lottery.py")
    lot = config.lottery
    rounds, fraction, k = lot.get("rounds"), lot.get("prune_fraction"), lot.get("rewind_step")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"config.lottery.rounds={rounds!r}: allowed integers >= 1")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"config.lottery.prune_fraction={fraction!r}: allowed values in (0, 1)")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= config.num_steps:
        raise ConfigError(
            f"config.lottery.rewind_step={k!r}: allowed integers in [0, num_steps={config.num_steps}]"
        )
    try:
        re.compile(lot.get("keep_dense", ""))
    except (re.error, TypeError) as e:
        raise ConfigError(f"config.lottery.keep_dense={lot.get('keep_dense')!r}: {e}") from None
    if config.sparsity.algorithm not in ("dense", NAME):
        raise ConfigError(
            f"config.sparsity.algorithm={config.sparsity.algorithm!r}: lottery tickets start from "
            "the dense network; allowed dense"
        )


def round_dir(workdir: str, r: int) -> str:
    """Round ``r``'s run directory, ``workdir/round_<r>``."""
    return os.path.join(workdir, f"round_{r}")


def round_config(
    config: ml_collections.ConfigDict, workdir: str, r: int
) -> ml_collections.ConfigDict:
    """The ``experiments.train`` config of round ``r``."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.sparsity.algorithm = NAME
    out.sparsity.rewind_step = int(config.lottery.rewind_step)
    out.sparsity.record_rewind = r == 0
    out.sparsity.masks_file = "" if r == 0 else os.path.join(round_dir(workdir, r), TICKET)
    return out


def _finished(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, "summary.json")
    return _read_json(path) if os.path.exists(path) else None


def _rewind_params(config: ml_collections.ConfigDict, workdir: str, summary0: dict) -> Flat:
    """``workdir/rewind.npz``, written from round 0's final checkpoint the first time."""
    path = os.path.join(workdir, REWIND)
    if not os.path.exists(path):
        rewind = tickets.rewind_point(round_dir(workdir, 0), int(summary0["step"]))
        tickets.save_arrays(path, rewind, step=int(config.lottery.rewind_step))
    return tickets.load_arrays(path)


def _prepare(config: ml_collections.ConfigDict, workdir: str, r: int, previous: dict) -> Flat:
    """Round ``r``'s mask (``round_<r>/ticket.npz``, written the first time), from round ``r - 1``'s
    final weights and mask."""
    path = os.path.join(round_dir(workdir, r), TICKET)
    if os.path.exists(path):
        return tickets.load_ticket(path)
    before = round_dir(workdir, r - 1)
    new, keep, total = tickets.prune_round(
        before,
        int(previous["step"]),
        None if r == 1 else tickets.load_ticket(os.path.join(before, TICKET)),
        r,
        config.lottery.prune_fraction,
        config.lottery.get("keep_dense", ""),
        seed=int(config.seed) * 1000 + r,
    )
    os.makedirs(round_dir(workdir, r), exist_ok=True)
    sj.save_masks(path, new, round=r, keep=keep, total=total)
    return new


def run_round(
    config: ml_collections.ConfigDict, directory: str, start: Flat | None
) -> dict[str, Any]:
    """``experiments.train.train_and_evaluate`` of one round, its params starting from ``start``
    (leaf path -> array; ``None``: a fresh init)."""
    return train.train_and_evaluate(config, directory, init_params=start)


def _row(r: int, summary: dict, masks: Flat | None, total: int | None) -> dict[str, Any]:
    active = None if masks is None else int(sum(int(m.sum()) for m in masks.values()))
    return {
        "round": r,
        "sparsity": 0.0 if masks is None else 1.0 - active / total,
        "active": total if masks is None else active,
        "prunable": total,
        "eval_accuracy": summary.get("eval_accuracy"),
        "eval_loss": summary.get("eval_loss"),
        "train_accuracy": summary.get("train_accuracy"),
        "train_loss": summary.get("train_loss"),
        "steps": summary.get("step"),
        "network_sparsity": summary.get("sparsity"),
        "runtime_s": summary.get("runtime_s"),
    }


def lottery(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run (or resume) every round in ``workdir``; returns ``lottery.json``'s contents.

    ``{"preempted": True}`` if a round was stopped by SIGTERM (it saved a checkpoint; re-run to go on).
    """
    check(config)
    os.makedirs(workdir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    summary_path = os.path.join(workdir, SUMMARY)
    rewind, total, previous = None, None, None
    for r in range(int(config.lottery.rounds)):
        directory = round_dir(workdir, r)
        masks = start = None
        if r >= 1:
            rewind = rewind if rewind is not None else _rewind_params(config, workdir, previous)
            masks = _prepare(config, workdir, r, previous)
            start = tickets.rewound(rewind, masks)
            total = total or sum(m.size for m in masks.values())
        summary = _finished(directory)
        if summary is None:
            result = run_round(round_config(config, workdir, r), directory, start)
            if result.get("preempted"):
                return {"preempted": True}
            summary = _finished(directory) or result
        if r == 0:
            weights = tickets.flatten(
                tickets.final_state(directory, int(summary["step"]))["params"]
            )
            keep_dense = config.lottery.get("keep_dense", "")
            total = sum(weights[n].size for n in tickets.prunable(weights, keep_dense))
        rows.append(_row(r, summary, masks, total))
        out = {
            "rounds": rows,
            "prune_fraction": float(config.lottery.prune_fraction),
            "rewind_step": int(config.lottery.rewind_step),
            "keep_dense": config.lottery.get("keep_dense", ""),
        }
        _write_json(summary_path, out)
        previous = summary
    return out


def table(result: dict[str, Any]) -> str:
    """One line per round: sparsity, held-out accuracy and loss, steps."""
    lines = [f"{'round':>5} {'sparsity':>8} {'eval_acc':>8} {'eval_loss':>9} {'steps':>6}"]
    for row in result["rounds"]:
        lines.append(
            f"{row['round']:>5} {row['sparsity']:>8.4f} {row['eval_accuracy']:>8.4f} "
            f"{row['eval_loss']:>9.4f} {row['steps']:>6}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; pass settings as --config.KEY=VALUE")
    logging.set_verbosity(logging.WARNING)
    config = flags.FLAGS.config
    if config is None:
        cli.fail("--config: required, e.g. --config=configs/lottery.py")
    cli.config_file(flags.FLAGS["config"])
    try:
        workdir = flags.FLAGS.workdir or train.default_workdir(flags.FLAGS["config"])
        validate.check(config, workdir)
        check(config)
    except (ConfigError, OSError) as e:
        cli.fail(str(e))
    result = cli.run(
        lambda: lottery(config, workdir),
        workdir,
        (ConfigError, checkpointing.CheckpointError),
        "re-run the same command to resume the unfinished round",
    )
    if result.get("preempted"):
        sys.exit(128 + signal.SIGTERM)
    print(table(result))


def define_flags() -> None:
    """The CLI flags (only when run as a program)."""
    train.define_flags()


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)

"""``python -m experiments.distributed --coordinator=H:P --num_processes=N --process_id=I --config=...``.

The multi-process launcher: start ``jax.distributed`` from the flags (``experiments.multihost``), then
run ``experiments.train`` in this process. Equivalent to ``python -m experiments.train`` with
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` set.
"""

from __future__ import annotations

from experiments import multihost


def main() -> None:
    """``python -m experiments.distributed --coordinator=H:P --num_processes=N --process_id=I
    --config=...``: start ``jax.distributed``, then run ``experiments.train`` in this process."""
    import sys

    from absl import app

    args = {"coordinator": None, "num_processes": None, "process_id": None}
    rest = [sys.argv[0]]
    for arg in sys.argv[1:]:
        key, _, value = arg.lstrip("-").partition("=")
        if key in args:
            args[key] = value
        else:
            rest.append(arg)
    multihost.initialize(args["coordinator"], args["num_processes"], args["process_id"])
    from experiments import cli, train  # after initialize: importing them creates arrays

    train.define_flags()
    sys.argv = rest
    app.run(train.main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()

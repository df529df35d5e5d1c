"""sparsejax experiments: the CLI training loop, data, models, checkpoints, logging and sweeps.

Entry points: ``python -m experiments.train`` and ``python -m experiments.sweep``.
"""

import os as _os

if int(_os.environ.get("JAX_NUM_PROCESSES") or 1) > 1:
    # Several processes (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): jax.distributed must
    # start before any device is touched, i.e. before `python -m experiments.train` imports sparsejax.
    from experiments import multihost as _multihost

    _multihost.initialize()

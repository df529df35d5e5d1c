"""sparsejax experiments: the CLI training loop, data, models, checkpoints, logging and sweeps.

Entry points: ``python -m experiments.train`` and ``python -m experiments.sweep``.
"""

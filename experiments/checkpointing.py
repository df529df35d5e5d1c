"""Orbax checkpoints of the whole train state plus the data iterator position, under ``workdir/checkpoints``.

Saves are synchronous: ``save`` returns only once the step directory is committed (orbax writes into a
temporary directory and renames it), so a run killed at any moment — SIGKILL during a save included — leaves
the last *complete* checkpoint as the latest one, and temporary leftovers are ignored on restart.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


class Checkpointer:
    """Save/restore ``(state pytree, data iterator state)`` pairs keyed by step."""

    def __init__(self, directory: str, keep: int = 2):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True
        )
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory), options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: PyTree, data_state: dict[str, Any]) -> None:
        """Write a checkpoint for ``step`` (overwrites nothing; a no-op if ``step`` is already saved)."""
        if step in self._manager.all_steps():
            return
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        )
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """The state (with the tree structure, shapes and dtypes of ``like``) and data state of ``step``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        )
        restored = self._manager.restore(step, args=args)
        return restored["state"], restored["data"]

    def close(self) -> None:
        """Wait for pending work and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

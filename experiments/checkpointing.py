"""Orbax checkpoints of the whole train state plus the data iterator position, under ``workdir/checkpoints``.

Saves are synchronous: ``save`` returns only once the step directory is committed (orbax writes into a
temporary directory and renames it), so a run killed at any moment — SIGKILL during a save included — leaves
the last *complete* checkpoint as the latest one, and temporary leftovers are ignored on restart.

A checkpoint that cannot be read back (flipped or truncated bytes, a deleted file, no commit marker) is not
fatal: :meth:`Checkpointer.restore_latest` falls back to the newest readable one, reports each unreadable one
in one ``warning:`` line and moves it to ``checkpoints/damaged/<step>`` (never deleting anything), where orbax
no longer sees it as a step. When no checkpoint is readable it raises :class:`CheckpointError` and moves
nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any

DAMAGED = "damaged"  # checkpoints/damaged/<step>: not an integer name, so never a step to orbax
ITEMS = ("state", "data")
# Files orbax writes into every finished step directory (0.12 writes both; 0.11 no commit_success.txt).
# A step directory that lacks one of them while another step directory here has it is incomplete.
MARKERS = ("commit_success.txt", "_CHECKPOINT_METADATA")
_REASON_CHARS = 200


class CheckpointError(Exception):
    """No checkpoint in the directory can be read; the message is one line."""


class Checkpointer:
    """Save/restore ``(state pytree, data iterator state)`` pairs keyed by step."""

    def __init__(self, directory: str, keep: int = 2):
        self._directory = directory
        self._keep = keep
        self._closed = False
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, enable_async_checkpointing=False, create=True
        )
        return ocp.CheckpointManager(
            os.path.abspath(self._directory), options=options, item_names=ITEMS
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: release orbax's threads, never mask the original error
            self.close()
        except Exception:  # noqa: BLE001
            pass

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
        # Ctrl-C mid-save would leave orbax's writer threads to fail (with tracebacks) at exit.
        with _ctrl_c_deferred():
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

    def restore_latest(self, like: PyTree) -> tuple[int, PyTree, dict[str, Any]] | None:
        """``(step, state, data state)`` of the newest readable checkpoint, or None if there is none.

        Unreadable newer checkpoints are each reported in one ``warning:`` line on stderr and moved to
        ``damaged/`` once a readable one was found. If none is readable, raises :class:`CheckpointError`
        and leaves the directory untouched.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if steps:  # before the first read: a failing read's fallout starts as it fails
            _mute_abandoned_reads()
        unreadable: list[tuple[int, str]] = []
        for step in steps:
            reason = self._incomplete(step, steps)
            if reason is None:
                try:
                    state, data_state = self.restore(step, like)
                except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
                    reason = _reason(e, os.path.abspath(self._directory) + os.sep)
            if reason is not None:
                unreadable.append((step, reason))
                continue
            if unreadable:
                self._move_aside(unreadable, step)
            return step, state, data_state
        if unreadable:
            listed = "; ".join(f"step {s}: {r}" for s, r in unreadable)
            raise CheckpointError(
                f"no readable checkpoint in {self._directory} ({listed}); nothing was moved: "
                "move the directory away to start from scratch"
            )
        return None

    def close(self) -> None:
        """Wait for pending work and release the manager (again: a no-op)."""
        if self._closed:
            return
        self._closed = True
        self._manager.wait_until_finished()
        self._manager.close()

    def _step_dir(self, step: int) -> str:
        return os.path.join(self._directory, str(step))

    def _incomplete(self, step: int, steps: list[int]) -> str | None:
        """Why the directory of ``step`` is structurally incomplete, or None."""
        path = self._step_dir(step)
        if not os.path.isdir(path):
            return f"incomplete: no directory {path}"
        for item in ITEMS:
            if not os.path.isdir(os.path.join(path, item)):
                return f"incomplete: no {item}/ item"
        others = [self._step_dir(s) for s in steps if s != step]
        for marker in MARKERS:
            expected = any(os.path.exists(os.path.join(o, marker)) for o in others)
            if expected and not os.path.exists(os.path.join(path, marker)):
                return f"incomplete: no {marker}"
        return None

    def _move_aside(self, unreadable: list[tuple[int, str]], resumed: int) -> None:
        """Move each unreadable step directory under ``damaged/`` and reopen the manager."""
        if jax.process_index() == 0:
            for step, reason in unreadable:
                target = _free_path(os.path.join(self._directory, DAMAGED, str(step)))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(self._step_dir(step), target)
                print(
                    f"warning: checkpoint step {step} is unreadable ({reason}); moved it to "
                    f"{target}, resuming from step {resumed}",
                    file=sys.stderr,
                    flush=True,
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("sparsejax_checkpoint_moved_aside")
        # The manager caches its step list: reopen it, so a later save of a moved step is not skipped.
        self._manager.close()
        self._manager = self._open()


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Ctrl-C (SIGINT) inside the block raises KeyboardInterrupt once the block has finished.

    Only where SIGINT has Python's default handler, in the main thread; elsewhere a no-op.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _free_path(path: str) -> str:
    """``path``, or ``path.1``, ``path.2``, ... whichever does not exist yet."""
    candidate, n = path, 0
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate


def _reason(error: BaseException, directory: str) -> str:
    """``Type: first line`` of the innermost cause of ``error`` (tensorstore's own message), shortened.

    Paths under ``directory`` (absolute, with a trailing separator) are written relative to it.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    text = lines[0].replace(directory, "") if lines else ""
    for noise in (" [tensorstore_spec", ". See full TensorStore details"):
        text = text.split(noise, 1)[0]
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


_muted = False


def _mute_abandoned_reads() -> None:
    """Mute the fallout of a failed restore: orbax's event loop is closed while other reads are in flight.

    Each read that finishes later tries to wake the closed loop (``RuntimeError: Event loop is closed``,
    reported as an unraisable exception with no object), and its task or coroutine, never awaited, is
    reported when collected (an unraisable exception, asyncio's "... exception was never retrieved" for
    tasks and futures, or a "coroutine ... was never awaited" RuntimeWarning, depending on when the
    collector runs). Only those reports are dropped, from before the first restore on (a read can fail
    before ``restore`` returns) for the rest of the process; the experiments run no asyncio code of
    their own.
    """
    global _muted
    if _muted:
        return
    _muted = True
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        closed_loop = isinstance(value, RuntimeError) and "Event loop is closed" in str(value)
        if closed_loop and unraisable.object is None:
            return
        if _from_orbax(unraisable.object):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_AbandonedTaskFilter())
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)


def _from_orbax(obj: Any) -> bool:
    """Whether ``obj`` is an orbax coroutine (or a task running one)."""
    coro = obj.get_coro() if hasattr(obj, "get_coro") else obj
    code = getattr(coro, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _AbandonedTaskFilter(logging.Filter):
    """Drops asyncio's "Task/Future/_GatheringFuture exception was never retrieved" reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        first = record.getMessage().split("\n", 1)[0]
        return not first.endswith("exception was never retrieved")

"""Command-line plumbing shared by ``train`` and ``sweep``: every user error is one line, no traceback."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from absl import flags
from ml_collections import config_flags


def one_line(message: str) -> str:
    """The informative line of an error message.

    ml_collections wraps errors raised while loading a config file in a traceback; the last line
    (``ValueError: ...``) is the one that says what is wrong.
    """
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "invalid input"
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return lines[0]


def fail(message: str, status: int = 2) -> NoReturn:
    """Print ``error: <one line>`` on stderr and exit with ``status`` (2: bad input)."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(status)


def crash(error: BaseException, traceback_path: str) -> NoReturn:
    """An unexpected exception: ``error: <Type>: <first line> (traceback in PATH)``, exit status 1.

    The full traceback goes to ``traceback_path``; only if that cannot be written is it printed.
    """
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    try:
        with open(traceback_path, "w") as f:
            traceback.print_exception(error, file=f)
    except OSError:
        traceback.print_exception(error)
        sys.exit(1)
    print(f"error: {text[:300]} (traceback in {traceback_path})", file=sys.stderr)
    sys.exit(1)


def run(job: Callable[[], Any], workdir: str, expected: tuple[type, ...], resume: str) -> Any:
    """``job()`` with one-line exits: an ``expected`` error (bad input) exits 2, Ctrl-C 130 with
    the ``resume`` hint, anything else 1 with the traceback in ``workdir`` (one file per process)."""
    try:
        return job()
    except expected as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"interrupted; {resume}", 130)
    except Exception as e:  # noqa: BLE001 - one line on stderr, the traceback in the workdir
        import jax  # here: the CLI modules stay importable without starting a backend

        index = jax.process_index()
        name = "traceback.txt" if jax.process_count() == 1 else f"traceback.{index}.txt"
        crash(e, os.path.join(workdir, name))


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where every failure (unknown key, wrong type, bad preset) is one line."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - config files may raise anything while loading
        fail(str(e))


def config_file(config_flag) -> str:
    """The ``path[:arg]`` of a config flag, failing in one line if the file does not exist."""
    spec = config_flags.get_config_filename(config_flag)
    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
        fail(
            f"--config={spec}: no such file {path!r} (paths are relative to the current directory)"
        )
    return spec

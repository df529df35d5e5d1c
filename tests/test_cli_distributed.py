"""The training CLI beyond one device, end to end: ``python -m experiments.train`` as two JAX processes on
localhost (2 host devices each, params FSDP-sharded across the processes), and as one process with an
8-device ``data=2 x fsdp=4`` mesh, each training a few RigL steps (masks updated twice, crop augmentation,
evals with a padded last batch). Both end where the 1-device run of the same config ends: every process
reads only its rows of each global batch, with the same records and augmentation as one process.

Also checked: only process 0 writes the run's files (an audit hook records every file a process opens
for writing), the checkpoints hold the configured shardings (orbax metadata), and the two-process
checkpoint resumes on two processes (``experiments.distributed`` flags this time) to the same end.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _subprocess import free_port, spawn, wait_all

from sparsejax import sharding as shd

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cli_distributed")]

STEPS = 4
CONFIG = [
    "--config=configs/rigl_resnet.py",  # default preset: crop augmentation; RigL, 80% ERK
    "--config.model.name=mlp",
    "--config.model.hidden=(32,)",
    "--config.data.name=digits",
    "--config.data.num_threads=0",
    "--config.data.max_eval_examples=40",  # eval batches of 16, 16, 8 rows: process 1's last is padding
    "--config.batch_size=16",
    f"--config.num_steps={STEPS}",
    "--config.optimizer.warmup_steps=0",
    "--config.log_every=1",
    "--config.eval_every=2",
    "--config.checkpoint_every=2",
    "--config.sparsity.update_every=2",
    f"--config.sparsity.end_step={STEPS}",
]
TRAIN = [sys.executable, "-m", "experiments.train", *CONFIG]
MULTI_MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=-1"]  # fsdp=4 spans both processes
MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=4"]
WRITER_FILES = {"config.json", "metrics.jsonl", "summary.json"}

# `python -m experiments.train`, run by runpy as `-m` does, after installing an audit hook that appends
# to $WRITES_LOG every path under $WORKDIR that this process opens for writing or renames onto.
AUDITED_TRAIN = textwrap.dedent(
    """
    import os, runpy, sys
    workdir = os.path.abspath(os.environ["WORKDIR"]) + os.sep
    log = open(os.environ["WRITES_LOG"], "w", buffering=1)

    def under_workdir(path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return isinstance(path, str) and os.path.abspath(path).startswith(workdir)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if mode is not None:
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and under_workdir(path):
                log.write(os.path.abspath(path) + "\\n")
        elif event == "os.rename" and under_workdir(args[1]):
            log.write(os.path.abspath(args[1]) + "\\n")

    sys.addaudithook(hook)
    runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
    """
)


def _result(log: str) -> dict:
    """The summary line a run prints last."""
    return json.loads([line for line in log.splitlines() if line.startswith("{")][-1])


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _metadata(workdir, step: int = STEPS):
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.metadata(os.path.join(workdir, "checkpoints", str(step), "state")).item_metadata


def _state(workdir, step: int = STEPS) -> dict[str, np.ndarray]:
    """The checkpointed train state of ``step``, whatever topology wrote it, as ``{key path: array}``."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), _metadata(workdir, step)
    )
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(os.path.join(workdir, "checkpoints", str(step), "state"), target)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def _assert_same_run(workdir, reference) -> None:
    """Same final state (masks and counters exactly, floats tightly), mask snapshots and logged metrics."""
    got, want = _state(workdir), _state(reference)
    assert sorted(got) == sorted(want)
    assert any("['masks']" in k for k in want)
    for k, w in want.items():
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(got[k], w, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-6, err_msg=k)
    snapshots = sorted(os.listdir(os.path.join(reference, "masks")))
    assert sorted(os.listdir(os.path.join(workdir, "masks"))) == snapshots
    for name in snapshots:
        with (
            np.load(os.path.join(workdir, "masks", name)) as a,
            np.load(os.path.join(reference, "masks", name)) as b,
        ):
            assert sorted(a.files) == sorted(b.files)
            for k in b.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}:{k}")
    rows, ref_rows = _rows(workdir), _rows(reference)
    assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in ref_rows]
    for r, ref in zip(rows, ref_rows):
        for key in ("loss", "accuracy", "sparsity", "lr", "dropped", "grown", "sad", "itop"):
            if key in ref:
                np.testing.assert_allclose(r[key], ref[key], rtol=1e-5, err_msg=(r["step"], key))
    assert any(r.get("dropped") for r in ref_rows)  # the masks did move


def _assert_sharded(workdir, mesh_shape: dict[str, int]) -> None:
    """Every params-shaped leaf (params, masks, ever_active, momentum) FSDP-sharded on ``mesh_shape``,
    the other leaves replicated, as ``sparsejax.sharding`` lays them out."""
    mesh = jax.sharding.AbstractMesh(tuple(mesh_shape.values()), tuple(mesh_shape))
    flat = jax.tree_util.tree_flatten_with_path(_metadata(workdir))[0]
    params = {tuple(path[1:]) for path, _ in flat if path[0].key == "params"}
    fsdp = 0
    for path, meta in flat:
        sharding = meta.sharding
        assert dict(zip(sharding.axis_names, sharding.shape)) == mesh_shape, path
        params_shaped = any(tuple(path[-len(p) :]) == p for p in params)
        want = shd.fsdp_spec(meta.shape, mesh) if params_shaped else jax.sharding.PartitionSpec()
        assert tuple(sharding.partition_spec) == tuple(want), (jax.tree_util.keystr(path), want)
        fsdp += "fsdp" in tuple(want)
        if "['masks']" in jax.tree_util.keystr(path):
            assert "fsdp" in tuple(want), path
    assert fsdp >= 10  # 3 params, 2 masks, 2 ever_active, 3 momentum leaves


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run all at once: one process on 1 device (the reference), two processes on 2 devices each, one
    process on 8 devices; their workdirs and outputs."""
    tmp = tmp_path_factory.mktemp("cli_distributed")
    dirs = {name: str(tmp / name) for name in ("single", "multi", "mesh")}
    # A persistent compilation cache: the resumed two-process run loads the compiled train step.
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache")}
    procs = {
        "single": spawn([*TRAIN, f"--workdir={dirs['single']}"], devices=1, **cache),
        "mesh": spawn([*TRAIN, f"--workdir={dirs['mesh']}", *MESH], devices=8, **cache),
    }
    coordinator = f"127.0.0.1:{free_port()}"
    for i in range(2):
        procs[f"process {i}"] = spawn(
            [
                sys.executable,
                "-c",
                AUDITED_TRAIN,
                *CONFIG,
                f"--workdir={dirs['multi']}",
                *MULTI_MESH,
            ],
            devices=2,
            JAX_COORDINATOR_ADDRESS=coordinator,
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
            WORKDIR=dirs["multi"],
            WRITES_LOG=str(tmp / f"writes_{i}.txt"),
            **cache,
        )
    logs = wait_all(procs, timeout=300)
    writes = []
    for i in range(2):
        with open(tmp / f"writes_{i}.txt") as f:
            writes.append({os.path.relpath(p, dirs["multi"]) for p in f.read().split()})
    return {"tmp": tmp, "dirs": dirs, "logs": logs, "writes": writes, "cache": cache}


def test_two_processes_match_one_process(runs):
    dirs, logs = runs["dirs"], runs["logs"]
    _assert_same_run(dirs["multi"], dirs["single"])
    _assert_sharded(dirs["multi"], {"data": 1, "fsdp": 4, "model": 1})
    want = _result(logs["single"])
    for i in range(2):  # both processes return the same final metrics as the single run
        got = _result(logs[f"process {i}"])
        for key in ("step", "train_loss", "eval_loss", "eval_accuracy", "sparsity"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


def test_only_process_0_writes_run_files(runs):
    lead, other = runs["writes"]
    in_checkpoints = {w for w in other if w.startswith("checkpoints" + os.sep)}
    assert in_checkpoints  # the hook saw process 1 write (its orbax shard metadata) ...
    assert other == in_checkpoints  # ... and nothing else
    files = {w for w in lead if not w.startswith("checkpoints" + os.sep)}
    assert WRITER_FILES <= files
    snapshots = {
        os.path.join("masks", n) for n in os.listdir(os.path.join(runs["dirs"]["multi"], "masks"))
    }
    assert snapshots and snapshots <= files
    with open(os.path.join(runs["dirs"]["multi"], "summary.json")) as f:
        assert json.load(f)["step"] == STEPS


def test_mesh_run_is_sharded_and_matches_one_device(runs):
    dirs = runs["dirs"]
    _assert_same_run(dirs["mesh"], dirs["single"])
    _assert_sharded(dirs["mesh"], {"data": 2, "fsdp": 4, "model": 1})


def test_two_process_checkpoint_resumes_on_two_processes(runs):
    """Drop the last checkpoint of the two-process run; restarting both processes (flags instead of
    environment variables) restores the sharded step-2 checkpoint and ends as the single run does."""
    dirs, resumed = runs["dirs"], str(runs["tmp"] / "resumed")
    shutil.copytree(dirs["multi"], resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", str(STEPS)))
    os.remove(os.path.join(resumed, "summary.json"))
    coordinator = f"127.0.0.1:{free_port()}"
    launcher = [sys.executable, "-m", "experiments.distributed", f"--coordinator={coordinator}"]
    procs = {
        f"process {i}": spawn(
            [*launcher, "--num_processes=2", f"--process_id={i}", *CONFIG, f"--workdir={resumed}"]
            + MULTI_MESH,
            devices=2,
            **runs["cache"],
        )
        for i in range(2)
    }
    logs = wait_all(procs, timeout=300)
    for log in logs.values():
        result = _result(log)
        assert result["step"] == STEPS and result["first_step_s"] is not None
    restarted = [r for r in _rows(resumed) if "first_step_s" in r]  # the first step of each process
    assert [r["step"] for r in restarted] == [1, 3]
    _assert_same_run(resumed, dirs["single"])

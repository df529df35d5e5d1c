"""sparsejax.viz and experiments.plot on real short runs of ``python -m experiments.train``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("viz")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.model.name=mlp",
    "--config.model.hidden=(64, 32)",
    "--config.data.augment=none",
    "--config.batch_size=64",
    "--config.log_every=5",
    "--config.eval_every=10",
    "--config.checkpoint_every=0",
]
RUNS = {  # name -> config file and overrides
    "rigl": ["configs/rigl_resnet.py", "--config.num_steps=30", "--config.sparsity.update_every=5"],
    "static_uniform": [
        "configs/static.py",
        "--config.num_steps=20",
        "--config.sparsity.distribution=uniform",
        "--config.sparsity.sparsity=0.9",
    ],
    "sr_ste": ["configs/sr_ste.py", "--config.num_steps=20"],
}


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory) -> dict[str, str]:
    """Three finished runs (RigL ERK 80%, static uniform 90%, SR-STE 2:4), trained two at a time."""
    base = tmp_path_factory.mktemp("viz_runs")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs, dirs = {}, {}
    for name, (config, *overrides) in RUNS.items():
        dirs[name] = str(base / name)
        cmd = [sys.executable, "-m", "experiments.train", f"--config={config}",
               f"--workdir={dirs[name]}", *TINY, *overrides]  # fmt: skip
        if len(procs) == 2:  # at most two at a time on two cores
            _wait(procs.popitem())
        procs[name] = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    for item in list(procs.items()):
        _wait(item)
    return dirs


def _wait(item) -> None:
    name, proc = item
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{name}: {err[-3000:]}"


@pytest.fixture(scope="session")
def runs(workdirs):
    from sparsejax import viz

    return {name: viz.read_workdir(path) for name, path in workdirs.items()}


def _lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())]


def _bars(fig):
    return [p for ax in fig.axes for p in ax.patches if p.get_height() > 0]


def test_import_sparsejax_does_not_import_matplotlib():
    code = "import sys, sparsejax, sparsejax.viz as v; v.read_workdir; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_reader(runs):
    rigl = runs["rigl"]
    assert rigl.algorithm == "rigl" and rigl.label.startswith("rigl erk")
    steps = rigl.mask_steps
    assert steps[0] == 0 and steps[-1] == 30 and len(steps) >= 6  # init, every update, end
    masks = rigl.masks()
    assert masks and all(m.dtype == bool for m in masks.values())
    s, sad = rigl.series("sad")
    assert len(s) == len(steps) - 2 and (sad > 0).any()
    assert rigl.final("accuracy") is not None


def test_curves(runs):
    from sparsejax import viz

    fig = viz.plot_curves(list(runs.values()), "loss")
    assert len(_lines(fig)) == 2 * len(runs)  # train + eval per run
    assert len(_lines(viz.plot_curves(runs["rigl"], "accuracy"))) == 2


def test_sparsity_and_density(runs):
    from sparsejax import viz

    rigl = runs["rigl"]
    n_leaves = len(rigl.masks())
    fig = viz.plot_sparsity(rigl)
    assert len(_lines(fig)) == 1 + n_leaves
    _, per_leaf = viz.per_layer_sparsity(rigl)
    total = rigl.series("sparsity")[1]
    assert np.allclose(total, 0.8, atol=0.01) and len(per_leaf) == n_leaves
    fig = viz.plot_layer_density([rigl, runs["static_uniform"]])
    assert len(_bars(fig)) == 2 * n_leaves  # ERK vs uniform, one bar per leaf each
    uniform = runs["static_uniform"].masks()
    assert all(abs(viz.density(m) - 0.1) < 0.01 for m in uniform.values())


def test_sad_itop_drop_grow(runs):
    from sparsejax import viz

    rigl = runs["rigl"]
    steps, consecutive, from_init = viz.sad_from_snapshots(rigl)
    assert consecutive[0] == 0 and from_init[-1] > 0 and len(steps) == len(rigl.mask_steps)
    assert len(_lines(viz.plot_sad(rigl))) == 2
    fig = viz.plot_itop([rigl, runs["static_uniform"]])
    assert len(_lines(fig)) == 2
    itop = rigl.series("itop")[1]
    assert np.all(np.diff(itop) >= 0) and itop[-1] > 0.2
    _, snap_itop = viz.itop_from_snapshots(runs["static_uniform"])
    assert np.allclose(snap_itop, snap_itop[0])  # a static mask never grows its ITOP rate
    fig = viz.plot_drop_grow(rigl)
    assert len(_lines(fig)) == 2
    _, dropped = rigl.series("dropped")
    _, grown = rigl.series("grown")
    assert np.array_equal(dropped, grown) and dropped.sum() > 0


def test_mask_pictures(runs):
    from sparsejax import viz

    rigl = runs["rigl"]
    steps = rigl.mask_steps
    fig = viz.plot_mask_heatmap(rigl, "dense_0/kernel", [steps[0], steps[-1]])
    assert sum(len(ax.get_images()) for ax in fig.axes) == 2
    fig = viz.plot_mask_heatmap(rigl)
    assert sum(len(ax.get_images()) for ax in fig.axes) == 3
    before, after = rigl.masks(steps[0]), rigl.masks(steps[-1])
    fig = viz.plot_mask_changes(before["dense_0/kernel"], after["dense_0/kernel"])
    image = fig.axes[0].get_images()[0].get_array()
    changed = (before["dense_0/kernel"] != after["dense_0/kernel"])[:1024]
    assert int((np.asarray(image) >= 2).sum()) == int(changed.sum()) > 0
    assert len(viz.plot_run_changes(rigl).axes[0].get_images()) == 1
    fig = viz.plot_input_connectivity(after["dense_0/kernel"])
    assert fig.axes[0].get_images()[0].get_array().shape == (28, 28)


def test_nm_occupancy(runs):
    from sparsejax import viz

    masks = runs["sr_ste"].masks()
    nm = {k: v for k, v in masks.items() if v.shape[-2] % 4 == 0}
    occ = viz.group_occupancy(nm["dense_0/kernel"], 4)
    assert np.all(occ == 2)  # exactly 2:4
    fig = viz.plot_nm_occupancy(nm, 4)
    assert len(fig.axes) == len(nm)
    assert len(_bars(fig)) == len(nm)  # one spike at N=2 per leaf
    fig = viz.plot_nm_occupancy(runs["rigl"].masks(), 4)  # unstructured: spread over 0..4
    assert len(_bars(fig)) > len(fig.axes)


def test_accuracy_vs_sparsity(runs):
    from sparsejax import viz

    fig = viz.plot_accuracy_vs_sparsity(list(runs.values()))
    assert len(fig.axes[0].containers) == 3  # rigl, static, sr_ste: one error-bar line each
    records = [
        {"algorithm": a, "sparsity": s, "accuracy": acc, "std": 0.01}
        for a in ("rigl", "set")
        for s, acc in ((0.8, 0.9), (0.9, 0.85))
    ] + [{"algorithm": "dense", "sparsity": 0.0, "accuracy": 0.95}]
    fig = viz.plot_accuracy_vs_sparsity(records)
    assert len(fig.axes[0].containers) == 2  # rigl, set; dense is a reference line
    assert any(line.get_linestyle() == ":" for line in fig.axes[0].get_lines())


def test_plot_cli(workdirs, tmp_path):
    out = tmp_path / "plots"
    cmd = [sys.executable, "-m", "experiments.plot", f"--workdir={workdirs['rigl']}",
           f"--workdir={workdirs['static_uniform']}", f"--out={out}"]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    names = {os.path.relpath(p, out) for p in res.stdout.split()}
    assert {"loss.png", "accuracy.png", "itop.png", "layer_density.png", "accuracy_vs_sparsity.png",
            "rigl/sparsity.png", "rigl/sad.png", "rigl/drop_grow.png", "rigl/mask_heatmap.png",
            "rigl/mask_changes.png", "static_uniform/sparsity.png"} <= names  # fmt: skip
    assert all(os.path.getsize(out / n) > 5000 for n in names)
    bad = subprocess.run([sys.executable, "-m", "experiments.plot", f"--workdir={tmp_path}/nope"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: --workdir=")

"""Every notebook in notebooks/ runs top to bottom (nbclient, kernel ``python3``) on a few steps."""

from __future__ import annotations

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.xdist_group("notebooks")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
STEPS = {"quickstart": 40, "mask_dynamics": 40, "nm_sparsity": 30}


def test_notebooks_found():
    names = {os.path.splitext(os.path.basename(p))[0] for p in NOTEBOOKS}
    assert set(STEPS) <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p))
def test_notebook_runs(path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit without outputs"
    )
    name = os.path.splitext(os.path.basename(path))[0]
    monkeypatch.setenv("SPARSEJAX_NB_STEPS", str(STEPS.get(name, 30)))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(path)}},
    )
    client.execute()
    images = sum(
        "image/png" in out.get("data", {})
        for c in nb.cells if c.cell_type == "code" for out in c.outputs
    )  # fmt: skip
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    if name != "quickstart":
        assert images >= 4, f"{name}: only {images} figures rendered"

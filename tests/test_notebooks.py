"""Every notebook in notebooks/ runs top to bottom (nbclient, kernel ``python3``) on a few steps.

They run in a fresh clone of the repository (the ``fresh_clone`` fixture of tests/conftest.py), with the
clone's root as the kernel's working directory, so they import the clone's packages and need nothing
that only a developer's checkout has.
"""

from __future__ import annotations

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.xdist_group("notebooks")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
STEPS = {"quickstart": 40, "quickstart_nnx": 40, "mask_dynamics": 40, "nm_sparsity": 30}
NO_FIGURES = {"quickstart", "quickstart_nnx"}  # text only; the others must render their plots
# Appended to each notebook in memory: the code it ran is the clone's, not the installed checkout's.
FROM_CLONE = """\
import os, configs, experiments, sparsejax
_files = [os.path.realpath(m.__file__) for m in (configs, experiments, sparsejax)]
assert all(f.startswith(os.path.realpath(os.getcwd()) + os.sep) for f in _files), _files
"""


def test_notebooks_found():
    names = {os.path.splitext(os.path.basename(p))[0] for p in NOTEBOOKS}
    assert set(STEPS) <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.basename(p))
def test_notebook_runs(path, fresh_clone, monkeypatch):
    path = os.path.join(fresh_clone, os.path.relpath(path, ROOT))
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit without outputs"
    )
    nb.cells.append(nbformat.v4.new_code_cell(FROM_CLONE))
    name = os.path.splitext(os.path.basename(path))[0]
    monkeypatch.setenv("SPARSEJAX_NB_STEPS", str(STEPS.get(name, 30)))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(fresh_clone)}},  # the kernel's working directory
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
    if name not in NO_FIGURES:
        assert images >= 4, f"{name}: only {images} figures rendered"

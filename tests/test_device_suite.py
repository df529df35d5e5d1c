"""benchmarks/device_suite.sh --smoke runs every part on CPU and names the device in every result."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("device_suite")


def _machine():
    spec = importlib.util.spec_from_file_location("machine", ROOT / "benchmarks" / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "kind,slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "geforce_rtx_4090"),
        ("TPU v5 lite", "tpu_v5_lite"),
        ("cpu", "cpu"),
    ],
)
def test_device_slug(kind, slug):
    assert _machine().slugify(kind) == slug


@pytest.mark.parametrize("tunables", ["glibc.malloc.hugetlb=1", None])
def test_summary_says_how_host_memory_is_paged(monkeypatch, tunables):
    if tunables is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    line = _machine().summary()
    assert f"GLIBC_TUNABLES={tunables or '(unset)'}" in line, line
    assert re.search(r"THP (always|madvise|never|unknown),", line), line


def _results_snapshot() -> dict[str, float]:
    """mtimes of the committed results the suite's parts would write (others may be rewritten meanwhile)."""
    results = ROOT / "benchmarks" / "results"
    parts = (
        "gpu_kernel_check",
        "block_sparse_matmul",
        "step_overhead",
        "sparse_training_speed",
        "device_suite",
    )
    if not results.is_dir():
        return {}
    return {p.name: p.stat().st_mtime for p in results.iterdir() if p.name.startswith(parts)}


def test_smoke_suite_writes_every_result_naming_the_device(tmp_path):
    before = _results_snapshot()
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        ["bash", "benchmarks/device_suite.sh", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    slug = _machine().slugify(jax.devices()[0].device_kind)
    kind = jax.devices()[0].device_kind
    parts = ["gpu_kernel_check", "block_sparse_matmul", "step_overhead"]
    if (ROOT / "benchmarks" / "sparse_training_speed.py").exists():
        parts.append("sparse_training_speed")
    for name in [*parts, "device_suite"]:
        md = out / f"{name}_{slug}.md"
        assert md.exists(), f"{md.name} missing; wrote {sorted(p.name for p in out.iterdir())}"
        assert kind in md.read_text(), f"{md.name} does not name the device {kind!r}"
    if "sparse_training_speed" in parts:  # whole-step timings depend on how host memory is paged
        assert "GLIBC_TUNABLES=" in (out / f"sparse_training_speed_{slug}.md").read_text()
    summary = (out / f"device_suite_{slug}.md").read_text()
    for name in ("kernels", "matmul", "overhead"):
        assert f"| {name} | ok |" in summary
    # The kernel check really compared numbers, and the smoke left the committed results alone.
    assert "2/2 ok" in (out / f"gpu_kernel_check_{slug}.md").read_text()
    assert _results_snapshot() == before


def test_unknown_argument_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        ["bash", "benchmarks/device_suite.sh", "--smok"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--smoke, --out DIR" in proc.stderr

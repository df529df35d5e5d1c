"""benchmarks/profile_step.py traces a real step and attributes its time to the model's HLO ops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_profile_names_the_compressed_layers_ops_with_their_shapes():
    cmd = [sys.executable, "benchmarks/profile_step.py", "--smoke", "--case", "mlp", "--top", "40"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    head, *rows = out.stdout.strip().splitlines()
    total = float(re.match(r"mlp compressed at 90%: ([\d.]+) ms of ops", head).group(1))
    ops = [r.split(" | ") for r in rows if re.match(r"\| [\d.]+ \| \S+ \| \S", r)]
    assert ops and total > 0, out.stdout
    # Each op carries its result shape and the model code it came from; the block-sparse hidden
    # layers (block_0, block_1) are among the sources, and no single op exceeds the step.
    assert all(re.match(r"\(?[a-z]+\d*\[", shape) for _, _, shape, _ in ops), out.stdout
    assert any("/block_" in src for *_, src in ops), out.stdout
    assert all(float(ms.strip("| ")) <= total for ms, *_ in ops), out.stdout

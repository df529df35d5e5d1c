"""A user's own method, as docs/design.md writes it: one file of theirs, no edit under sparsejax/.

The test takes the two code blocks of "Writing your own algorithm" from docs/design.md verbatim (the
method's file and the config file that registers it), writes them into a temporary directory, and runs
``python -m experiments.train`` on them, overriding a key of the method from the command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from _subprocess import ROOT, device_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("user_algorithm")]


def _blocks() -> tuple[str, str]:
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        doc = f.read()
    section = doc[doc.index("### Writing your own algorithm") :]
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", section, re.S)]
    method = next(b for b in blocks if b.startswith("# my_method.py"))
    config = next(b for b in blocks if "get_config" in b)
    return method, config


def test_documented_user_algorithm_trains_through_the_cli(tmp_path):
    method, config = _blocks()
    (tmp_path / "my_method.py").write_text(method)
    config = config.replace(
        "config.sparsity.algorithm", "config.num_steps = 6\n    config.sparsity.algorithm"
    )
    (tmp_path / "my_config.py").write_text(config)
    env = device_env(1, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.train", f"--config={tmp_path / 'my_config.py'}",
           f"--workdir={workdir}", "--config.sparsity.update_every=2",
           "--config.sparsity.drop_fraction=0.5", "--config.model.name=mlp",
           "--config.eval_every=0", "--config.checkpoint_every=0"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    resolved = json.loads((workdir / "config.json").read_text())
    assert resolved["sparsity"]["algorithm"] == "rigl_gw"
    assert resolved["sparsity"]["drop_fraction"] == 0.5
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(abs(r["sparsity"] - 0.9) < 0.02 for r in train)
    assert any(r.get("grown", 0) > 0 for r in train)  # the user's grow score moved masks

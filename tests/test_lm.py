"""The sparse language-model workload: the embedded corpus, the causal transformer, and both LM configs
run a few steps through ``experiments.train`` and report perplexity and average parameter count."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import text
from experiments.models.transformer_lm import TransformerLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_corpus_is_real_english_with_fixed_split():
    tokens = text.corpus_bytes()
    assert 400_000 < len(tokens) < 600_000
    prose = bytes(tokens[:20_000]).decode("utf-8", "ignore")
    assert prose.count(" the ") > 100
    rows = text.windows(tokens, 16)
    assert rows.shape[1] == 17 and rows.shape[0] == len(tokens) // 17
    src = text.WindowSource(rows)
    np.testing.assert_array_equal(src[3]["image"][1:], src[3]["label"][:-1])


def test_transformer_lm_is_causal():
    model = TransformerLM(num_classes=256, hidden_dim=32, depth=1, num_heads=2, mlp_dim=64)
    x = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 256)
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    y = x.at[:, 7].set((x[:, 7] + 1) % 256)
    a, b = model.apply({"params": params}, x), model.apply({"params": params}, y)
    assert a.shape == (2, 12, 256)
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not jnp.allclose(a[:, 7:], b[:, 7:])
    untied = TransformerLM(hidden_dim=32, depth=1, num_heads=2, mlp_dim=64, tie_embeddings=False)
    assert "head" in untied.init(jax.random.PRNGKey(1), x)["params"]


@pytest.mark.parametrize("config", ["gmp_lm", "srste_lm"])
def test_lm_config_trains_and_reports_perplexity(config, tmp_path):
    workdir = tmp_path / config
    args = [
        "--config.num_steps=6", "--config.log_every=2", "--config.sparsity.update_every=2",
        "--config.model.hidden_dim=32", "--config.model.mlp_dim=64", "--config.model.depth=1",
        "--config.data.seq_len=16", "--config.batch_size=8", "--config.data.max_eval_examples=16",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "experiments.train", f"--config=configs/{config}.py"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [*cmd, f"--workdir={workdir}", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert 1.0 < summary["eval_perplexity"] < 256 * 2
    assert np.isclose(summary["eval_perplexity"], np.exp(summary["eval_loss"]))
    assert 0 < summary["avg_param_count"] <= summary["param_count"]
    if config == "srste_lm":  # 2:4 on the block kernels from the start
        assert summary["sparsity"] > 0.2  # half of the kernels; the embedding is dense

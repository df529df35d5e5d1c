"""Bad input: every invalid config value or flag is one clear line naming the key and allowed values."""

import os
import subprocess
import sys

import optax
import pytest

import sparsejax as sj
from configs import base
from experiments import models, steps, validate
from experiments.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


# (key, bad value, what the message must contain)
CHECKED_BY_VALIDATE = [
    ("num_steps", -5, "config.num_steps=-5: allowed integers >= 0"),
    ("batch_size", 0, "config.batch_size=0: allowed integers >= 1"),
    ("log_every", 0, "config.log_every=0: allowed integers >= 1"),
    ("eval_every", -1, "config.eval_every=-1"),
    ("checkpoint_every", -10, "config.checkpoint_every=-10"),
    (
        "wandb.mode",
        "sometimes",
        "config.wandb.mode: unknown mode 'sometimes'; allowed: disabled, offline, online",
    ),
    (
        "optimizer.name",
        "adagrad",
        "config.optimizer.name: unknown optimizer 'adagrad'; allowed: sgd, momentum, adam, adamw, lion",
    ),
    (
        "optimizer.schedule",
        "exp",
        "config.optimizer.schedule: unknown schedule 'exp'; allowed: constant, cosine",
    ),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate=0.0: allowed values are > 0"),
    ("optimizer.warmup_steps", -1, "config.optimizer.warmup_steps=-1"),
    ("optimizer.decay_boundaries", (0.5, 1.5), "config.optimizer.decay_boundaries=(0.5, 1.5)"),
    (
        "model.name",
        "resnet999",
        "config.model.name: unknown model 'resnet999'; allowed: mlp, lenet, resnet20",
    ),
    ("model.widht", 4, "config.model.widht: unknown model key"),
    ("data.augment", "mixup", "config.data.augment: unknown augmentation 'mixup'"),
    ("data.num_threads", -1, "config.data.num_threads=-1"),
    (
        "xla_cpu_dots",
        "mkl",
        "config.xla_cpu_dots: unknown library 'mkl'; allowed: ynnpack, eigen",
    ),
]


@pytest.mark.parametrize(
    "key, value, expected", CHECKED_BY_VALIDATE, ids=[c[0] for c in CHECKED_BY_VALIDATE]
)
def test_validate_rejects(key, value, expected):
    config = base.get_base_config()
    _set(config, key, value)
    with pytest.raises(ConfigError) as e:
        validate.check(config)
    assert expected in str(e.value) and "\n" not in str(e.value)


CHECKED_BY_SPARSEJAX = [
    ("sparsity.sparsity", 1.0, "^sparsity=1.0: allowed"),
    ("sparsity.sparsity", -0.1, "^sparsity=-0.1: allowed"),
    ("sparsity.algorithm", "rigl2", "^algorithm='rigl2': allowed values are dense, static"),
    ("sparsity.distribution", "gaussian", "^distribution='gaussian': allowed"),
    ("sparsity.update_every", 0, "^update_every=0: allowed"),
]


@pytest.mark.parametrize(
    "key, value, expected",
    CHECKED_BY_SPARSEJAX,
    ids=[f"{c[0]}={c[1]}" for c in CHECKED_BY_SPARSEJAX],
)
def test_from_config_rejects(key, value, expected):
    config = base.get_base_config()
    config.sparsity.algorithm = "rigl"
    _set(config, key, value)
    with pytest.raises(ValueError, match=expected):
        sj.from_config(config.sparsity, num_steps=config.num_steps)


def test_n_greater_than_m():
    config = base.get_base_config()
    config.sparsity.algorithm, config.sparsity.n, config.sparsity.m = "sr_ste", 4, 2
    with pytest.raises(ValueError, match="^n=4, m=2: allowed 0 < n < m"):
        sj.from_config(config.sparsity, num_steps=10)


def test_m_not_dividing_the_grouped_axis_names_the_leaf_before_any_step_compiles():
    config = base.get_base_config()
    config.model.name, config.model.hidden = "mlp", (30,)
    config.sparsity.algorithm, config.sparsity.n, config.sparsity.m = "ste", 2, 4
    algo = sj.from_config(config.sparsity, num_steps=10)
    model = models.build(config.model, num_classes=10)
    tx = sj.sparsify(optax.sgd(0.1), algo)
    with pytest.raises(
        ValueError, match="head/kernel"
    ):  # head kernel is (30, 10): 4 does not divide 30
        steps.init_state(model, tx, (8, 8, 1), seed=0)


def test_workdir_checks(tmp_path):
    # Missing directories are fine (the run creates them, parents included); the check creates nothing.
    validate.check_workdir(str(tmp_path / "new_run"))
    validate.check_workdir(str(tmp_path / "missing" / "deeper" / "run"))
    assert sorted(os.listdir(tmp_path)) == []
    (tmp_path / "file").write_text("x")
    for bad, message in [
        (tmp_path / "file", "exists and is not a directory"),
        (tmp_path / "file" / "run", "cannot be created, .*file is not a directory"),
        (tmp_path / "file" / "a" / "run", "cannot be created, .*file is not a directory"),
    ]:
        with pytest.raises(ConfigError, match=message) as e:
            validate.check_workdir(str(bad))
        assert str(e.value).startswith(f"--workdir={bad}: ") and "; allowed: " in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--workdir: empty; allowed: "):
        validate.check_workdir("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_workdir_or_ancestor(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="directory .*locked is not writable; allowed: "):
            validate.check_workdir(str(locked))
        with pytest.raises(ConfigError, match="cannot be created, .*locked is not writable"):
            validate.check_workdir(str(locked / "new" / "run"))
    finally:
        locked.chmod(0o755)


CLI_CASES = {
    "sparsity": (["--config.sparsity.sparsity=1.5"], "sparsity.sparsity=1.5"),
    "unknown_key": (["--config.no_such_key=1"], "no_such_key"),
    "bad_type": (["--config.batch_size=abc"], "batch_size"),
    "bad_preset": (
        ["--config=configs/rigl_resnet.py:nope"],
        "allowed presets are default, cifar10, imagenet",
    ),
    "missing_file": (["--config=configs/missing.py"], "configs/missing.py"),
    "unprepared_tfds": (
        ["--config.data.name=cifar10", "--config.data.tfds_data_dir={tmp}"],
        "tfds build cifar10",
    ),
    "workdir_under_file": (["--workdir={tmp}/a_file/run"], "a_file is not a directory; allowed:"),
}


def test_cli_exits_nonzero_with_one_line_on_stderr(tmp_path):
    """Each case runs as its own process (concurrently, to keep the test short).

    A rejected run leaves no directory behind: each case's workdir (and its missing parent) is only created
    once every check has passed.
    """
    (tmp_path / "a_file").write_text("x")
    procs = {}
    for name, (args, _) in CLI_CASES.items():
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        if not any(a.startswith("--config=") for a in args):
            args.insert(0, "--config=configs/rigl_resnet.py")
        if not any(a.startswith("--workdir=") for a in args):
            args.insert(0, f"--workdir={tmp_path / name / 'run'}")
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "experiments.train", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, stderr)
        assert CLI_CASES[name][1] in lines[0], (name, lines[0])
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # no workdir, no parent of one

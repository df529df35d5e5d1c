"""Every config and preset resolves, validates and builds its algorithm; sweeps name real keys."""

import glob
import importlib.util
import os

import pytest

import sparsejax as sj
from experiments import models, sweep, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if not p.endswith(("__init__.py", "base.py"))
)


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A config without presets takes only get_config() / get_config(None).
CASES = [(p, preset) for p in CONFIG_FILES for preset in getattr(_load(p), "PRESETS", ("default",))]


def test_the_expected_configs_exist():
    names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
    assert {"rigl_resnet", "dense", "static", "gmp", "set", "granet", "sr_ste", "pgf"} <= names


@pytest.mark.parametrize(
    "path, preset", CASES, ids=[f"{os.path.basename(p)[:-3]}:{a}" for p, a in CASES]
)
def test_config_resolves_and_validates(path, preset):
    config = _load(path).get_config(None if preset == "default" else preset)
    validate.check(config)
    algo = sj.from_config(config.sparsity, num_steps=config.num_steps)
    assert (
        algo.name == {"set": "set_sparse"}.get(config.sparsity.algorithm, config.sparsity.algorithm)
        or algo.name
    )
    assert config.model.name in models.MODELS
    assert config.to_json()  # serialisable, as config.json needs


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[os.path.basename(p)[:-3] for p in CONFIG_FILES])
def test_sweep_points_name_existing_keys(path):
    module = _load(path)
    if not hasattr(module, "get_sweep"):
        pytest.skip("no sweep")
    points = sweep.load_points(path)
    sweep.check_points(points, module.get_config())
    names = sweep.point_names(points)
    assert len(set(names)) == len(names)


def test_unknown_preset_is_one_clear_error():
    with pytest.raises(ValueError, match="allowed presets are default, cifar10, imagenet"):
        _load(os.path.join(ROOT, "configs", "rigl_resnet.py")).get_config("cifar100")


def test_rigl_presets_follow_the_paper():
    rigl = _load(os.path.join(ROOT, "configs", "rigl_resnet.py"))
    cifar = rigl.get_config("cifar10")
    assert (cifar.model.name, cifar.data.name, cifar.sparsity.sparsity) == (
        "wrn22_2",
        "cifar10",
        0.8,
    )
    assert [p["sparsity.sparsity"] for p in rigl.get_sweep("cifar10")] == [0.8, 0.9]
    imagenet = rigl.get_config("imagenet")
    s = imagenet.sparsity
    assert (imagenet.model.name, s.distribution, s.update_every, s.drop_fraction) == (
        "resnet50",
        "erk",
        100,
        0.3,
    )
    assert s.drop_schedule == "cosine" and s.sparsity == 0.8


def test_gmp_window_follows_num_steps_overrides():
    gmp = _load(os.path.join(ROOT, "configs", "gmp.py")).get_config()
    gmp.num_steps = 1000
    assert (gmp.sparsity.start_step, gmp.sparsity.end_step) == (250, 750)

"""``from_config``: every algorithm builds from a config section; bad values fail with one line."""

import ml_collections
import numpy as np
import pytest

import sparsejax as sj
from sparsejax.registry import config_defaults


def section(**kw):
    cfg = ml_collections.ConfigDict(config_defaults())
    cfg.end_step = 100
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize(
    "algo,extra",
    [
        ("dense", {}),
        ("static", {}),
        ("gmp", {}),
        ("global_magnitude", {}),
        ("set", {}),
        ("rigl", {}),
        ("granet", {"initial_sparsity": 0.5}),
        ("ste", {"n": 2, "m": 4}),
        ("ste", {}),
        ("sr_ste", {"n": 2, "m": 4}),
        ("pgf", {"n": 1, "m": 8}),
        ("pgf", {"n": 1, "m": 8, "pgf_mode": "sdgf"}),
        ("snip", {}),
        ("spdf", {"sparse_phase": "rigl", "release_step": 50}),
        ("maskllm", {"n": 2, "m": 4}),
    ],
)
def test_every_algorithm_builds(algo, extra):
    built = sj.from_config(section(algorithm=algo, **extra))
    assert isinstance(built, sj.SparseAlgorithm)
    assert built.name == ("set" if algo == "set" else algo)


def test_end_step_defaults_to_three_quarters_of_training():
    algo = sj.from_config(section(algorithm="rigl", end_step=None, update_every=10), num_steps=1000)
    assert algo.is_update_step(740) and not algo.is_update_step(750)


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"algorithm": "lottery"}, "algorithm="),
        ({"algorithm": "rigl", "sparsity": 1.0}, "sparsity="),
        ({"algorithm": "rigl", "sparsity": -0.5}, "sparsity="),
        ({"algorithm": "rigl", "distribution": "normal"}, "distribution="),
        ({"algorithm": "sr_ste", "n": 4, "m": 2}, "n=4"),
        ({"algorithm": "rigl", "update_every": 0}, "update_every="),
        ({"algorithm": "rigl", "start_step": -1}, "start_step="),
        ({"algorithm": "rigl", "end_step": -5}, "end_step="),
        ({"algorithm": "rigl", "drop_fraction": 1.5}, "drop_fraction="),
        ({"algorithm": "rigl", "drop_schedule": "linear"}, "drop_schedule="),
        ({"algorithm": "rigl", "init": "zeros"}, "init="),
        ({"algorithm": "gmp", "initial_sparsity": 0.95}, "initial_sparsity="),
        ({"algorithm": "pgf", "n": 1, "m": 8, "pgf_mode": "fast"}, "pgf_mode="),
        ({"algorithm": "pgf", "n": 1, "m": 8, "pgf_decay": "cubic"}, "pgf_decay="),
        (
            {"algorithm": "pgf", "n": 1, "m": 8, "sdgf_schedule": "coarse", "pgf_mode": "sdgf"},
            "sdgf_schedule=",
        ),
        ({"algorithm": "sr_ste", "n": 2, "m": 4, "sr_decay": -1.0}, "sr_decay="),
        ({"algorithm": "rigl", "block_size": (0, 4)}, "block_size="),
        ({"algorithm": "rigl", "overrides": {"conv": "abc"}}, "overrides="),
    ],
)
def test_bad_values_one_clear_line(kw, key):
    with pytest.raises(ValueError) as err:
        sj.from_config(section(**kw))
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "allowed" in msg, msg


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match="unknown key"):
        sj.from_config({"algorithm": "rigl", "end_step": 10, "sparsty": 0.9})


def test_overrides_string_form():
    from sparsejax.registry import parse_overrides

    assert parse_overrides("Dense_0/kernel=0.0;.*Conv.*=0.95") == {
        "Dense_0/kernel": 0.0,
        ".*Conv.*": 0.95,
    }


def test_defaults_come_from_the_constructors():
    """One source of truth: a key's config default is the constructors' (None where they differ)."""
    d = config_defaults()
    assert d["update_every"] == 100 and d["drop_fraction"] == 0.3 and d["end_step"] is None
    assert d["drop_schedule"] is None  # RigL's paper: cosine; SET's: constant
    assert d["sr_decay"] == 2e-4 and d["nm_axis"] == -2 and d["release_step"] is None
    assert sj.from_config(section(algorithm="set", end_step=None)).is_update_step(10**6)  # no end
    rigl = sj.from_config(section(algorithm="rigl", end_step=None, update_every=10), num_steps=1000)
    assert rigl.is_update_step(740) and not rigl.is_update_step(750)
    with pytest.raises(ValueError, match="end_step=None: allowed an integer >= 0, or num_steps"):
        sj.from_config({"algorithm": "rigl"})


def test_register_algorithm_from_user_code():
    """A user's constructor becomes a config name; its keyword arguments become config keys."""

    def topk_static(sparsity: float = 0.5, *, flavour: str = "plain", seed: int = 0, **layout):
        assert flavour == "spicy"
        return sj.static(sparsity, seed=seed, **layout)

    sj.register_algorithm("my_static", topk_static)
    try:
        assert config_defaults()["flavour"] == "plain"
        algo = sj.from_config({"algorithm": "my_static", "flavour": "spicy", "sparsity": 0.75})
        masks = sj.masks_of(algo.init({"w": np.ones((8, 8), np.float32)}))
        assert int(masks["w"].sum()) == 16
        with pytest.raises(ValueError, match="already registered"):
            sj.register_algorithm("rigl", topk_static)
    finally:
        sj.ALGORITHMS.pop("my_static")

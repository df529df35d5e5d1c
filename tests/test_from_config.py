"""``from_config``: every algorithm builds from a config section; bad values fail with one line."""

import ml_collections
import pytest

import sparsejax as sj
from sparsejax.registry import DEFAULTS


def section(**kw):
    cfg = ml_collections.ConfigDict(dict(DEFAULTS))
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
        ({"algorithm": "lottery"}, "sparsity.algorithm"),
        ({"algorithm": "rigl", "sparsity": 1.0}, "sparsity.sparsity"),
        ({"algorithm": "rigl", "sparsity": -0.5}, "sparsity.sparsity"),
        ({"algorithm": "rigl", "distribution": "normal"}, "sparsity.distribution"),
        ({"algorithm": "sr_ste", "n": 4, "m": 2}, "sparsity.n"),
        ({"algorithm": "sr_ste", "n": 2}, "sparsity.n"),
        ({"algorithm": "rigl", "update_every": 0}, "sparsity.update_every"),
        ({"algorithm": "rigl", "start_step": -1}, "sparsity.start_step"),
        ({"algorithm": "rigl", "end_step": -5}, "sparsity.end_step"),
        ({"algorithm": "rigl", "drop_fraction": 1.5}, "sparsity.drop_fraction"),
        ({"algorithm": "rigl", "drop_schedule": "linear"}, "sparsity.drop_schedule"),
        ({"algorithm": "rigl", "init": "zeros"}, "sparsity.init"),
        ({"algorithm": "gmp", "initial_sparsity": 0.95}, "sparsity.initial_sparsity"),
        ({"algorithm": "pgf", "n": 1, "m": 8, "pgf_mode": "fast"}, "sparsity.pgf_mode"),
        ({"algorithm": "pgf", "n": 1, "m": 8, "pgf_decay": "cubic"}, "sparsity.pgf_decay"),
        (
            {"algorithm": "pgf", "n": 1, "m": 8, "sdgf_schedule": "coarse", "pgf_mode": "sdgf"},
            "sparsity.sdgf_schedule",
        ),
        ({"algorithm": "sr_ste", "n": 2, "m": 4, "sr_decay": -1.0}, "sparsity.sr_decay"),
        ({"algorithm": "rigl", "block_size": (0, 4)}, "sparsity.block_size"),
        ({"algorithm": "rigl", "overrides": {"conv": "abc"}}, "sparsity.overrides"),
    ],
)
def test_bad_values_one_clear_line(kw, key):
    with pytest.raises(sj.ConfigError) as err:
        sj.from_config(section(**kw))
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "allowed" in msg, msg


def test_unknown_key_rejected():
    with pytest.raises(sj.ConfigError, match="unknown key"):
        sj.from_config({"algorithm": "rigl", "end_step": 10, "sparsty": 0.9})


def test_overrides_string_form():
    from sparsejax.registry import parse_overrides

    assert parse_overrides("Dense_0/kernel=0.0;.*Conv.*=0.95") == {
        "Dense_0/kernel": 0.0,
        ".*Conv.*": 0.95,
    }

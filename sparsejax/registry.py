"""Algorithm names -> constructors, and ``from_config`` for the ``config.sparsity`` section.

Adding an algorithm: write ``algorithms/NAME.py`` with a constructor returning a ``SparseAlgorithm`` and
add one line to ``ALGORITHMS``. ``from_config`` fills the constructor's keyword arguments from config keys
of the same name (or the aliases on that line), and the Layout fields when it takes ``**layout``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from sparsejax.algorithms.dense import dense
from sparsejax.algorithms.gmp import global_magnitude, gmp
from sparsejax.algorithms.granet import granet
from sparsejax.algorithms.pgf import pgf
from sparsejax.algorithms.rigl import rigl
from sparsejax.algorithms.set_sparse import set_sparse
from sparsejax.algorithms.static import static
from sparsejax.algorithms.ste import sr_ste, ste
from sparsejax.core import SparseAlgorithm
from sparsejax.distributions import DISTRIBUTIONS
from sparsejax.layout import LAYOUT_KEYS
from sparsejax.selection import ConfigError

# name -> (constructor, {config key: constructor argument} for keys whose names differ)
ALGORITHMS: dict[str, tuple[Callable[..., SparseAlgorithm], dict[str, str]]] = {
    "dense": (dense, {}),
    "static": (static, {}),
    "gmp": (gmp, {}),
    "global_magnitude": (global_magnitude, {}),
    "set": (set_sparse, {}),
    "rigl": (rigl, {}),
    "granet": (granet, {}),
    "ste": (ste, {"nm_axis": "axis"}),
    "sr_ste": (sr_ste, {"nm_axis": "axis", "sr_decay": "decay"}),
    "pgf": (pgf, {"nm_axis": "axis", "pgf_mode": "mode", "pgf_decay": "decay", "pgf_coef": "coef"}),
}

# Every key config.sparsity may hold, with its default (None: the constructor's own default).
DEFAULTS: dict[str, Any] = {
    "algorithm": "dense",
    "sparsity": 0.9,
    "distribution": "erk",
    "overrides": {},
    "dense_first": False,
    "dense_last": False,
    "init": "random",
    "block_size": None,
    "update_every": 100,
    "start_step": 0,
    "end_step": None,
    "drop_fraction": 0.3,
    "drop_schedule": None,
    "initial_sparsity": 0.0,
    "n": None,
    "m": None,
    "nm_axis": -2,
    "skip_indivisible": False,
    "sr_decay": 2e-4,
    "pgf_mode": "mdgf",
    "pgf_decay": "linear",
    "pgf_coef": 1e-4,
    "sdgf_schedule": "sparsify",
    "warmup_steps": 0,
    "seed": 0,
}
_STEP_KEYS = ("update_every", "start_step", "end_step", "warmup_steps")


def parse_overrides(value: Any) -> dict[str, float]:
    """Overrides as a mapping, a list of ``(regex, sparsity)`` pairs, or ``"regex=s;regex=s"``."""
    if not value:
        return {}
    try:
        if isinstance(value, str):
            pairs = [item.rsplit("=", 1) for item in value.split(";") if item.strip()]
        elif isinstance(value, Mapping):
            pairs = list(value.items())
        else:
            pairs = [tuple(p) for p in value]
        return {str(k).strip(): float(v) for k, v in pairs}
    except (TypeError, ValueError):
        raise ConfigError(
            f"sparsity.overrides={value!r}: allowed a mapping regex -> sparsity, a list of "
            "(regex, sparsity) pairs, or 'regex=s;regex=s'"
        ) from None


def _validate(cfg: dict[str, Any]) -> None:
    algo = cfg["algorithm"]
    if algo not in ALGORITHMS:
        raise ConfigError(
            f"sparsity.algorithm={algo!r}: allowed values are {', '.join(ALGORITHMS)}"
        )
    if not isinstance(cfg["sparsity"], (int, float)) or not 0.0 <= cfg["sparsity"] < 1.0:
        raise ConfigError(f"sparsity.sparsity={cfg['sparsity']!r}: allowed values are in [0, 1)")
    if cfg["distribution"] not in DISTRIBUTIONS:
        raise ConfigError(
            f"sparsity.distribution={cfg['distribution']!r}: allowed values are {', '.join(DISTRIBUTIONS)}"
        )
    for key in _STEP_KEYS:
        if cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < 0):
            raise ConfigError(f"sparsity.{key}={cfg[key]!r}: allowed values are integers >= 0")
    if cfg["update_every"] == 0:
        raise ConfigError("sparsity.update_every=0: allowed values are integers >= 1")
    n, m = cfg["n"], cfg["m"]
    if (n is None) != (m is None) and algo in ("ste", "sr_ste", "pgf"):
        raise ConfigError(f"sparsity.n={n}, sparsity.m={m}: allowed both set (N:M) or neither")
    if n is not None and m is not None:
        if not (isinstance(n, int) and isinstance(m, int)) or n < 1 or m < 1:
            raise ConfigError(f"sparsity.n={n}, sparsity.m={m}: allowed positive integers")
        if n >= m:
            raise ConfigError(f"sparsity.n={n} > sparsity.m={m}: allowed 0 < n < m (e.g. 2:4, 1:8)")
    if not 0.0 <= cfg["drop_fraction"] <= 1.0:
        raise ConfigError(
            f"sparsity.drop_fraction={cfg['drop_fraction']}: allowed values are in [0, 1]"
        )


def from_config(config: Any, num_steps: int | None = None) -> SparseAlgorithm:
    """Builds the algorithm described by a ``config.sparsity`` section (ConfigDict or mapping).

    Every value is validated first; a bad one raises :class:`ConfigError` with one line naming the key
    and the allowed values. ``end_step=None`` means 75% of ``num_steps`` (RigL's default).
    """
    given = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"sparsity.{unknown[0]}: unknown key; allowed keys are {', '.join(DEFAULTS)}"
        )
    cfg = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    cfg["overrides"] = parse_overrides(cfg["overrides"])
    _validate(cfg)
    if cfg["end_step"] is None:
        if num_steps is None:
            raise ConfigError(
                "sparsity.end_step=None: allowed an integer >= 0 (or pass num_steps to from_config)"
            )
        cfg["end_step"] = max(int(0.75 * num_steps), cfg["start_step"] + 1)
    if cfg["block_size"] is not None:
        cfg["block_size"] = tuple(cfg["block_size"])
    ctor, aliases = ALGORITHMS[cfg["algorithm"]]
    params = inspect.signature(ctor).parameters
    takes_layout = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for key, value in cfg.items():
        arg = aliases.get(key, key)
        if arg in params and params[arg].kind is not inspect.Parameter.VAR_KEYWORD:
            kwargs[arg] = value
        elif takes_layout and key in LAYOUT_KEYS and key != "sparsity":
            kwargs[key] = value
    if cfg["algorithm"] == "pgf" and cfg["n"] is None:
        raise ConfigError(
            "sparsity.n / sparsity.m: pgf needs both; allowed 0 < n < m, e.g. n=1, m=8"
        )
    return ctor(**{k: v for k, v in kwargs.items() if v is not None})

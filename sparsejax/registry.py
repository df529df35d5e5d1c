"""Algorithm names -> constructors; ``register_algorithm`` for your own; ``from_config`` for configs.

The constructors' signatures are the one source of truth for every option and its default: a config
key is a constructor keyword argument of the same name (plus the :class:`~sparsejax.layout.Layout`
fields for constructors taking ``**layout``), and :func:`config_defaults` derives the whole
``config.sparsity`` section from them. A key whose default differs between algorithms (each follows
its own paper) defaults to None there: "the chosen algorithm's own default".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from sparsejax.algorithms.dense import dense
from sparsejax.algorithms.gmp import global_magnitude, gmp
from sparsejax.algorithms.granet import granet
from sparsejax.algorithms.maskllm import maskllm
from sparsejax.algorithms.pgf import pgf
from sparsejax.algorithms.rigl import rigl
from sparsejax.algorithms.set_sparse import set_sparse
from sparsejax.algorithms.snip import snip
from sparsejax.algorithms.spdf import spdf
from sparsejax.algorithms.static import static
from sparsejax.algorithms.ste import sr_ste, ste
from sparsejax.core import SparseAlgorithm
from sparsejax.layout import Layout

Constructor = Callable[..., SparseAlgorithm]

ALGORITHMS: dict[str, Constructor] = {
    "dense": dense,
    "static": static,
    "gmp": gmp,
    "global_magnitude": global_magnitude,
    "set": set_sparse,
    "rigl": rigl,
    "granet": granet,
    "ste": ste,
    "sr_ste": sr_ste,
    "pgf": pgf,
    "snip": snip,
    "spdf": spdf,
    "maskllm": maskllm,
}

_NOT_CONFIG = ("num_steps",)  # filled from the top-level config.num_steps


def register_algorithm(name: str, constructor: Constructor) -> None:
    """Make ``constructor`` available as ``config.sparsity.algorithm=name`` (from your own module).

    Its keyword arguments become ``config.sparsity`` keys of the same names; ``num_steps``, if it
    takes one, receives the run's step count.
    """
    if not name.isidentifier():
        raise ValueError(f"algorithm={name!r}: allowed names are Python identifiers")
    if ALGORITHMS.get(name, constructor) is not constructor:
        raise ValueError(f"algorithm={name!r}: already registered to {ALGORITHMS[name].__module__}")
    ALGORITHMS[name] = constructor


def _code_only(p: inspect.Parameter) -> bool:
    """An argument only code can give (a schedule or other callable, None by default)."""
    return p.default is None and str(p.annotation).startswith(("optax.Schedule", "Callable"))


def _options(ctor: Constructor) -> dict[str, inspect.Parameter]:
    """A constructor's config keys: its keyword arguments; ``**kwargs`` adds the Layout fields, or
    the keys of the constructors listed in its ``forwards_to`` attribute (e.g. ``spdf``)."""
    params = inspect.signature(ctor).parameters
    out = {
        k: p
        for k, p in params.items()
        if p.kind is not p.VAR_KEYWORD and k not in _NOT_CONFIG and not _code_only(p)
    }
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        targets = getattr(ctor, "forwards_to", None)
        # Layout's own sparsity is the constructor's to set (N:M methods derive it from n:m).
        layout = {k: p for k, p in inspect.signature(Layout).parameters.items() if k != "sparsity"}
        for more in [layout] if targets is None else map(_options, targets):
            out.update({k: p for k, p in more.items() if k not in out})
    return out


def _type_of(p: inspect.Parameter) -> type:
    """The value type of a keyword argument: its default's, else the first type its annotation names."""
    if p.default not in (None, p.empty):
        return type(p.default)
    first = str(p.annotation).split("|")[0].split("[")[0].strip()
    return {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}.get(first, object)


def config_fields() -> dict[str, tuple[Any, type]]:
    """Every ``config.sparsity`` key of the registered algorithms: ``(default, type)``; the default is
    None where the algorithms' defaults differ (each uses its own). ``algorithm`` comes first."""
    seen: dict[str, list[inspect.Parameter]] = {}
    for ctor in ALGORITHMS.values():
        for key, p in _options(ctor).items():
            seen.setdefault(key, []).append(p)
    out: dict[str, tuple[Any, type]] = {"algorithm": ("dense", str)}
    for key, params in seen.items():
        values = [None if p.default is p.empty else p.default for p in params]
        agreed = all(v == values[0] for v in values)
        out[key] = (values[0] if agreed else None, _type_of(params[0]))
    out["overrides"] = (
        dict(out["overrides"][0] or {}),
        dict,
    )  # Layout keeps pairs; configs a mapping
    return out


def config_defaults() -> dict[str, Any]:
    """``config.sparsity`` keys -> defaults (see :func:`config_fields`)."""
    return {key: default for key, (default, _) in config_fields().items()}


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
        raise ValueError(
            f"overrides={value!r}: allowed a mapping regex -> sparsity, a list of "
            "(regex, sparsity) pairs, or 'regex=s;regex=s'"
        ) from None


def from_config(config: Any, num_steps: int | None = None) -> SparseAlgorithm:
    """Builds the algorithm described by a ``config.sparsity`` section (ConfigDict or mapping).

    Keys are the chosen constructor's keyword arguments; None values take the constructor's default,
    keys it does not take are ignored (a section holds every algorithm's keys), unknown keys fail.
    ``num_steps`` fills a ``num_steps`` argument (defaults relative to training length). A bad value
    raises ``ValueError`` with one line naming the key and the allowed values.
    """
    ctor, kwargs = resolve(config, num_steps)
    return ctor(**kwargs)


def resolve(config: Any, num_steps: int | None = None) -> tuple[Constructor, dict[str, Any]]:
    """``(constructor, kwargs)`` that :func:`from_config` calls, for tools that build a variant of
    the configured algorithm (e.g. ``kernels_pallas.compressed_algorithm``); same checks."""
    given = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    name = given.pop("algorithm", "dense")
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm={name!r}: allowed values are {', '.join(ALGORITHMS)}")
    known = {k for ctor in ALGORITHMS.values() for k in _options(ctor)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key; allowed keys are {', '.join(sorted(known))}")
    ctor = ALGORITHMS[name]
    options = _options(ctor)
    kwargs = {k: v for k, v in given.items() if k in options and v is not None}
    if "overrides" in kwargs:
        kwargs["overrides"] = parse_overrides(kwargs["overrides"])
    if "block_size" in kwargs:
        kwargs["block_size"] = tuple(kwargs["block_size"])
    if "num_steps" in inspect.signature(ctor).parameters and num_steps is not None:
        kwargs["num_steps"] = num_steps
    for key, value in kwargs.items():  # step counts: the usual slips are floats and negatives
        if key.endswith(("_step", "_steps", "_every")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}={value!r}: allowed integers >= 0")
    return ctor, kwargs

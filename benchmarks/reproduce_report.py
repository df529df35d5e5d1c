"""The report of ``benchmarks/reproduce.py``: mean +- std tables, the published orderings' verdicts, a plot.

Pure functions of the run records (``{"model", "algorithm", "level", "accuracy": [per seed], ...}``), so
the report can be rebuilt from ``reproduce*.json`` without training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The grid the tables lay out (``reproduce.plan`` runs all of it or a part).
DESCRIPTIONS = {"mlp": "MLP 784-256-128-10", "cnn": "CNN (conv 16 s2, conv 32 s2, dense 128, head)"}
UNSTRUCTURED = ("static_erk", "static_uniform", "gmp", "set", "rigl", "granet")
NM = ("ste", "sr_ste", "pgf")
PATTERNS = ((2, 4), (1, 4), (1, 8))
SPARSITIES = (0.8, 0.9, 0.95)


ORDERINGS = (  # (claim, algorithms best first, levels where it is claimed)
    ("RigL >= SET at the same sparsity", ("rigl", "set"), SPARSITIES),
    ("SET >= static (ERK) at the same sparsity", ("set", "static_erk"), SPARSITIES),
    ("RigL >= static (ERK) at the same sparsity", ("rigl", "static_erk"), SPARSITIES),
    (
        "ERK >= uniform at high sparsity (static, 90% and 95%)",
        ("static_erk", "static_uniform"),
        (0.9, 0.95),
    ),
    ("SR-STE >= STE", ("sr_ste", "ste"), PATTERNS),
    ("PGF >= SR-STE at high N:M sparsity (1:8)", ("pgf", "sr_ste"), ((1, 8),)),
)


def _key(level: Any) -> Any:
    return tuple(level) if isinstance(level, list) else level


def _fmt(level: Any) -> str:
    return (
        "dense"
        if level is None
        else f"{level[0]}:{level[1]}"
        if isinstance(level, (list, tuple))
        else f"{level:.0%}"
    )


def check_orderings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each claim: in how many (model, level) cases the means follow it, and whether any break is
    larger than twice the standard error of the difference."""
    acc = {
        (r["model"], r["algorithm"], _key(r["level"])): np.asarray(r["accuracy"]) for r in records
    }
    out = []
    for claim, chain, levels in ORDERINGS:
        cases, held, clear_breaks = [], 0, []
        for model in DESCRIPTIONS:
            for level in levels:
                if not all((model, a, level) in acc for a in chain):
                    continue
                holds = True
                for a, b in zip(chain[:-1], chain[1:]):
                    xa, xb = acc[(model, a, level)], acc[(model, b, level)]
                    d = xa.mean() - xb.mean()
                    se = (
                        np.sqrt(xa.var(ddof=1) / len(xa) + xb.var(ddof=1) / len(xb))
                        if len(xa) > 1
                        else 0.0
                    )
                    if d < 0:
                        holds = False
                        if se > 0 and -d > 2 * se:
                            clear_breaks.append(f"{model} {_fmt(level)}: {b} > {a} by {-d:.1%}")
                held += holds
                cases.append(f"{model} {_fmt(level)}: {'yes' if holds else 'no'}")
        if not cases:
            verdict = "not run"
        elif held == len(cases):
            verdict = "reproduced"
        else:
            verdict = f"{'partly' if held else 'not'} reproduced ({held}/{len(cases)} cases)"
        out.append(
            {"claim": claim, "verdict": verdict, "cases": cases, "clear_breaks": clear_breaks}
        )
    return out


def _table(records: list[dict[str, Any]], algos: tuple[str, ...], levels: tuple) -> list[str]:
    lines = ["| model | algorithm | " + " | ".join(_fmt(v) for v in levels) + " |",
             "| --- | --- |" + " --- |" * len(levels)]  # fmt: skip
    by = {(r["model"], r["algorithm"], _key(r["level"])): r for r in records}
    for model in DESCRIPTIONS:
        for algo in ("dense", *algos):
            cells = []
            for level in levels:
                if algo == "dense" and level != levels[0]:
                    cells.append("")
                    continue
                r = by.get((model, algo, None if algo == "dense" else level))
                a = np.asarray(r["accuracy"]) * 100 if r else None
                cells.append(f"{a.mean():.2f} ± {a.std():.2f}" if r else "")
            if any(cells):
                lines.append(f"| {model} | {algo} | " + " | ".join(cells) + " |")
    return lines


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: set-up, two mean +- std tables (held-out accuracy, %), and the orderings' verdicts."""
    lines = [
        "# Small-scale reproduction of the papers' orderings (`benchmarks/reproduce.py`)", "",
        f"mnist5k (4,000 train / 1,000 held-out digits), {meta['steps']} steps of batch {meta['batch']} "
        f"(~{meta['steps'] * meta['batch'] / 4000:.0f} epochs), SGD momentum 0.9, lr {meta['lr']} cosine, "
        f"{meta['seeds']} seed(s) per cell (init, mask and data order all vary), "
        f"{'quick mode, ' if meta['quick'] else ''}{meta['seconds']:.0f} s on {meta['machine']} "
        f"({meta['backend']}, jax {meta['jax']}). Models: "
        + " and ".join(DESCRIPTIONS[m] for m in dict.fromkeys(r["model"] for r in records))
        + ". Masks update every steps/30 steps until 75% of "
        "training (drop fraction 0.3, cosine); SET, RigL, GraNet and static-ERK use ERK, GMP uniform; "
        "GMP and GraNet prune from 10% to 75% of training; N:M leaves whose grouped axis M does not "
        "divide stay dense (the CNN's first conv, 1 input channel); PGF decays linearly to 0 at 75%.",
        "", "Held-out accuracy (%), mean ± std over seeds:", "",
    ]  # fmt: skip
    lines += _table(records, UNSTRUCTURED, SPARSITIES) + [""] + _table(records, NM, PATTERNS)
    lines += ["", "## Published orderings at this scale", "", "| claim | verdict | cases (means) |",
              "| --- | --- | --- |"]  # fmt: skip
    checks = check_orderings(records)
    for c in checks:
        lines.append(f"| {c['claim']} | {c['verdict']} | {'; '.join(c['cases'])} |")
    breaks = [b for c in checks for b in c["clear_breaks"]]
    lines += ["", "Breaks larger than 2 standard errors of the difference: " + ("; ".join(breaks) or "none") + ".",
              "Other breaks are within seed noise at this scale.", ""]  # fmt: skip
    return "\n".join(lines)


def plot(records: list[dict[str, Any]]):
    """Accuracy vs sparsity, one panel per (model, family), one line per algorithm."""
    from sparsejax import viz

    models = list(dict.fromkeys(r["model"] for r in records))
    fig = viz.new_figure(len(models), 2, size=(5.5, 4.0))
    axes = np.asarray(fig.axes).reshape(len(models), 2)
    for row, model in zip(axes, models):
        for ax, family in zip(row, (UNSTRUCTURED, NM)):
            pts = []
            for r in records:
                if r["model"] != model or r["algorithm"] not in ("dense", *family):
                    continue
                lv = r["level"]
                s = 0.0 if lv is None else 1 - lv[0] / lv[1] if isinstance(lv, list) else lv
                a = np.asarray(r["accuracy"])
                pts.append(
                    {
                        "algorithm": r["algorithm"],
                        "sparsity": s,
                        "accuracy": a.mean(),
                        "std": a.std(),
                    }
                )
            name = "unstructured" if family is UNSTRUCTURED else "N:M (2:4, 1:4, 1:8)"
            viz.plot_accuracy_vs_sparsity(pts, ax=ax, title=f"{model}: {name}")
    return fig

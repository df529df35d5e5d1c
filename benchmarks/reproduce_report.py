"""The report of ``benchmarks/reproduce.py``: mean +- std tables, the published orderings' verdicts, a plot.

Pure functions of the run records (``{"model", "algorithm", "level", "accuracy": [per seed], ...}``), so
the report can be rebuilt from ``reproduce*.json`` without training; several runs (one per model, say)
merge into one report, with a verdict column per model:

    python benchmarks/reproduce_report.py results/reproduce_mlp.json results/reproduce_cnn.json \\
        [--out benchmarks/results/reproduce]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from typing import Any

import numpy as np

# The grid the tables lay out (``reproduce.plan`` runs all of it or a part).
DESCRIPTIONS = {"mlp": "MLP 784-256-128-10", "cnn": "CNN (conv 16 s2, conv 32 s2, dense 128, head)"}
UNSTRUCTURED = (
    "static_erk", "static_uniform", "gmp", "set", "rigl", "granet", "snip", "spdf", "imp",
)  # fmt: skip
NM = ("ste", "sr_ste", "pgf", "maskllm")
PATTERNS = ((2, 4), (1, 4), (1, 8))
SPARSITIES = (0.8, 0.9, 0.95)
DATA = {  # how the set-up sentence names each dataset of ``reproduce.py --data``
    "mnist5k": "mnist5k (4,000 train / 1,000 held-out digits)",
    "fashion_mnist": "Fashion-MNIST (the official 60,000 train / 10,000 test images)",
}
# Dense rows of the dataset's own benchmark table (its README, "Benchmark": submitted, not re-tested by
# the dataset's authors), to set the dense baselines against: (model, preprocessing, test accuracy %).
PUBLISHED = {
    "fashion_mnist": (
        ("mlp", "MLP 256-128-100", "none", 88.33),
        ("cnn", "2 Conv+pooling (Kashif Rasul)", "none", 87.6),
        ("cnn", "2 Conv+pooling (TensorFlow's tutorial)", "none", 91.6),
        ("cnn", "2 Conv+pooling+ELU (PyTorch)", "none", 90.3),
    ),
}


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
    ("SNIP >= static (uniform) at the same sparsity", ("snip", "static_uniform"), SPARSITIES),
    ("SPDF (dense fine-tuning) >= static (ERK)", ("spdf", "static_erk"), SPARSITIES),
    ("Lottery tickets (IMP) >= static (uniform)", ("imp", "static_uniform"), SPARSITIES),
    ("MaskLLM (learned masks) >= STE (magnitude) at 2:4", ("maskllm", "ste"), ((2, 4),)),
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


def _gap(xa: np.ndarray, xb: np.ndarray) -> tuple[float, float]:
    """Difference of the mean accuracies and its standard error (0 with a single seed)."""
    se = np.sqrt(xa.var(ddof=1) / len(xa) + xb.var(ddof=1) / len(xb)) if len(xa) > 1 else 0.0
    return xa.mean() - xb.mean(), se


def check_orderings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each claim: in how many (model, level) cases the means follow it, and whether any break is
    larger than twice the standard error of the difference."""
    acc = {
        (r["model"], r["algorithm"], _key(r["level"])): np.asarray(r["accuracy"]) for r in records
    }
    out = []
    for claim, chain, levels in ORDERINGS:
        cases, held, clear_breaks = [], 0, []
        for model, level in itertools.product(DESCRIPTIONS, levels):
            if not all((model, a, level) in acc for a in chain):
                continue
            holds = True
            for a, b in zip(chain[:-1], chain[1:]):
                d, se = _gap(acc[(model, a, level)], acc[(model, b, level)])
                holds &= d >= 0
                if d < 0 and se > 0 and -d > 2 * se:
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


def _command(m: dict[str, Any]) -> str:
    """The command line that produced a run, rebuilt from its meta (the tag from its file if not there)."""
    source = os.path.splitext(m.get("source", ""))[0]
    tag = m.get("tag", source.removeprefix("reproduce").removeprefix("_quick"))
    flags = {"--data": m.get("data", "mnist5k") != "mnist5k" and m.get("data"),
             "--models": m["models"], "--algorithms": m.get("algorithms"), "--levels": m.get("levels"), "--quick": m["quick"], "--core": m["core"], "--steps": m["steps"],
             "--seeds": m["seeds"], "--batch": m["batch"] != 128 and m["batch"],
             "--lr": m["lr"] != 0.05 and m["lr"], "--tag": tag}  # fmt: skip
    return "python benchmarks/reproduce.py" + "".join(
        f" {k}" + ("" if v is True else f" {v}") for k, v in flags.items() if v
    )


def _published(records: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Our dense baselines next to the dataset's published benchmark rows (none for mnist5k)."""
    rows = PUBLISHED.get(meta.get("data", "mnist5k"), ())
    if not rows:
        return []
    ours = {
        r["model"]: np.asarray(r["accuracy"]) * 100 for r in records if r["algorithm"] == "dense"
    }
    lines = ["", "Dense baselines next to the dataset's own benchmark table (its README; submitted "
             "figures, best of unspecified epochs):", "", "| model | preprocessing | test accuracy (%) |",
             "| --- | --- | --- |"]  # fmt: skip
    for model, acc in ours.items():
        name = meta.get("mlp", DESCRIPTIONS["mlp"]) if model == "mlp" else DESCRIPTIONS[model]
        lines.append(
            f"| **ours, dense {name}** | standardised | {acc.mean():.2f} ± {acc.std():.2f} |"
        )
        lines += [f"| {n} (published) | {pre} | {a:.2f} |" for m, n, pre, a in rows if m == model]
    return lines


def _setup(meta: dict[str, Any] | list[dict[str, Any]], models: list[str]) -> str:
    """The set-up sentence: of the one run, or of each merged run (its models, budget, time, command)."""

    def budget(m):
        epochs = m["steps"] * m["batch"] / m.get("n_train", 4000)
        return (f"{m['steps']} steps of batch {m['batch']} (~{epochs:.1f} epochs), "
                f"SGD momentum 0.9, lr {m['lr']} cosine, {m['seeds']} seed(s) per cell")  # fmt: skip

    def where(m):
        return (f"{'quick mode, ' if m['quick'] else ''}{m['seconds']:.0f} s on {m['machine']} "
                f"({m['backend']}, jax {m['jax']})")  # fmt: skip

    first = meta if isinstance(meta, dict) else meta[0]
    head = DATA[first.get("data", "mnist5k")] + ", "

    def names(m):
        return dict(DESCRIPTIONS, mlp=m.get("mlp", DESCRIPTIONS["mlp"]))

    if isinstance(meta, dict):
        return (f"{head}{budget(meta)} (init, mask and data order all vary), {where(meta)}. Models: "
                + " and ".join(names(meta)[m] for m in models) + ".")  # fmt: skip
    runs = [
        f"{' and '.join(names(m)[x] for x in m['models'].split(','))}: {budget(m)}"
        + (", 90% and 1:8 only, no GMP/GraNet" if m["core"] else "")
        + f", {where(m)}; `{m['source']}` from `{_command(m)}`"
        for m in meta
    ]
    return head + "seeds vary init, mask and data order. Merged runs: " + ". ".join(runs) + "."


def markdown(records: list[dict[str, Any]], meta: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The report: set-up, two mean +- std tables (held-out accuracy, %), and the orderings' verdicts
    (one column per model when there are several). ``meta``: the run's, or a list of merged runs'."""
    models = list(dict.fromkeys(r["model"] for r in records))
    lines = [
        "# Small-scale reproduction of the papers' orderings (`benchmarks/reproduce.py`)", "",
        _setup(meta, models) + " Masks update every steps/30 steps until 75% of "
        "training (drop fraction 0.3, cosine); SET, RigL, GraNet and static-ERK use ERK, GMP uniform; "
        "GMP and GraNet prune from 10% to 75% of training; N:M leaves whose grouped axis M does not "
        "divide stay dense (the CNN's first conv, 1 input channel); PGF decays linearly to 0 at 75%.",
        "", "Held-out accuracy (%), mean ± std over seeds:", "",
    ]  # fmt: skip
    lines += _table(records, UNSTRUCTURED, SPARSITIES) + [""] + _table(records, NM, PATTERNS)
    lines += _published(records, meta if isinstance(meta, dict) else meta[0])
    cols = ["verdict"] if len(models) == 1 else [f"verdict ({m})" for m in models]
    lines += ["", "## Published orderings at this scale", "",
              "| claim | " + " | ".join(cols) + " | cases (means) |", "| --- |" + " --- |" * (len(cols) + 1)]  # fmt: skip
    per = [check_orderings([r for r in records if r["model"] == m]) for m in models]
    breaks = []
    for i, (claim, _, _) in enumerate(ORDERINGS):
        cases = [case for checks in per for case in checks[i]["cases"]]
        breaks += [b for checks in per for b in checks[i]["clear_breaks"]]
        verdicts = " | ".join(checks[i]["verdict"] for checks in per)
        lines.append(f"| {claim} | {verdicts} | {'; '.join(cases)} |")
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
                    dict(algorithm=r["algorithm"], sparsity=s, accuracy=a.mean(), std=a.std())
                )
            order = ("dense", *family)  # the same algorithm gets the same colour in every panel
            pts.sort(key=lambda p: (order.index(p["algorithm"]), p["sparsity"]))
            name = "unstructured" if family is UNSTRUCTURED else "N:M (2:4, 1:4, 1:8)"
            viz.plot_accuracy_vs_sparsity(pts, ax=ax, title=f"{model}: {name}")
    return fig


def merge(paths: list[str]) -> dict[str, Any]:
    """``reproduce*.json`` files as one result: every run's meta (with its ``source`` file) and the
    records, a later file's (model, algorithm, level) replacing an earlier one's."""
    runs, by = [], {}
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        runs += [
            dict(m, source=m.get("source", os.path.basename(path)))
            for m in d.get("runs", [d.get("meta")])
        ]
        by.update({(r["model"], r["algorithm"], _key(r["level"])): r for r in d["records"]})
    return {"runs": runs, "records": list(by.values())}


def write(stem: str, result: dict[str, Any]) -> str:
    """``stem.json``, ``stem.md`` (keeping a hand-written ``## Notes`` section already there) and
    ``stem.png``; returns the generated report."""
    with open(f"{stem}.json", "w") as f:
        json.dump(result, f, indent=1)
    report, notes = markdown(result["records"], result.get("meta") or result["runs"]), ""
    if os.path.exists(f"{stem}.md"):
        with open(f"{stem}.md") as f:
            old = f.read()
        notes = "\n" + old[old.index("\n## Notes") + 1 :] if "\n## Notes" in old else ""
    with open(f"{stem}.md", "w") as f:
        f.write(report + notes)
    plot(result["records"]).savefig(f"{stem}.png", dpi=110)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description="Merge reproduce*.json files into one report (no training)."
    )
    ap.add_argument("inputs", nargs="+", help="reproduce*.json files, e.g. one per model")
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "reproduce")
    ap.add_argument("--out", default=default, help="output stem (writes <out>.md/.json/.png)")
    args = ap.parse_args(argv)
    result = merge(args.inputs)
    print(write(args.out, result))
    return result


if __name__ == "__main__":
    main()

"""Where a train step's time goes: per-HLO-op times of one ``sparse_training_speed`` step.

Builds one step of ``benchmarks/sparse_training_speed.py`` (``--case mlp|vit_mlp``, ``--kind
dense|none`` or one of its ``SPARSE_KINDS``, ``--sparsity``), traces ``--steps`` calls with
``jax.profiler`` (its Perfetto JSON: no extra package needed) and prints, per step, the time of each
HLO op of the compiled program with its shape and the source it came from (``op_name``), then the
totals per op kind (numbered suffixes dropped, e.g. every ``ynn_fusion.N``). On CPU this is how the
4 KiB page faults on XLA's per-step buffers showed up (``docs/kernels.md``, "CPU: huge pages"). Ops
inside loops appear both on their own and inside the loop's ``while`` line, so the totals
double-count loop bodies.

    python benchmarks/profile_step.py --case vit_mlp --kind compressed [--sparsity 0.9] [--top 30]
    python benchmarks/profile_step.py --smoke   # tiny sizes, seconds (tests)
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sparse_training_speed as speed  # noqa: E402

_RUNTIME = ("$", "Thunk", "Pjit", "Slinky", "Common", "end: ", "Parse", "Handle", "Allocate")


def op_times(compiled, args: tuple, steps: int) -> dict[str, float]:
    """Seconds per call of each named event in a ``jax.profiler`` trace of ``steps`` calls."""
    jax.block_until_ready(compiled(*args))  # warm up outside the trace
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(compiled(*args))
        trace = next(Path(tmp).rglob("*.json.gz"))
        events = json.loads(gzip.decompress(trace.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(_RUNTIME):
            total[e["name"]] += e.get("dur", 0) * 1e-6 / steps
    return dict(total)


def hlo_lines(compiled) -> dict[str, tuple[str, str]]:
    """Each instruction of the compiled step: name -> (result shape, op_name of its source)."""
    out = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+)", line)
        if m:
            src = re.search(r'op_name="([^"]*)"', line)
            out[m.group(1)] = (m.group(2), src.group(1) if src else "")
    return out


def report(times: dict[str, float], hlo: dict[str, tuple[str, str]], top: int) -> str:
    """The ``top`` slowest ops (ms per step, shape, source) and the totals per op kind."""
    lines = ["| ms | op | shape | source |", "|---|---|---|---|"]
    for name, sec in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        shape, src = hlo.get(name, ("", ""))
        lines.append(f"| {1e3 * sec:.2f} | {name} | {shape[:40]} | {src[-90:]} |")
    kinds = collections.Counter()
    for name, sec in times.items():
        kinds[re.sub(r"(\.\d+)+$", "", name)] += sec
    lines += ["", "| ms | op kind |", "|---|---|"]
    lines += [f"| {1e3 * sec:.2f} | {kind} |" for kind, sec in kinds.most_common(top)]
    return "\n".join(lines)


def main(argv=None) -> None:
    """Build the step, trace it and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="vit_mlp", choices=["mlp", "vit_mlp"])
    p.add_argument("--kind", default="compressed", choices=["dense", "none", *speed.SPARSE_KINDS])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    args = p.parse_args(argv)
    sizes = speed.SIZES["smoke" if args.smoke else "full"]
    built = speed.build_case(args.case, sizes, args.sparsity, kinds=(args.kind,))
    variant = built["variants"][args.kind]
    # One executable, both timed and read: the trace's op names are its instructions' names.
    compiled = variant["step"].lower(*variant["args"]).compile()
    times = op_times(compiled, variant["args"], args.steps)
    print(
        f"{args.case} {args.kind} at {args.sparsity:.0%}: {1e3 * sum(times.values()):.1f} ms of ops"
    )
    print(report(times, hlo_lines(compiled), args.top))


if __name__ == "__main__":
    main()

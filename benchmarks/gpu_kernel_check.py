"""The compiled Pallas GPU kernels against a dense jnp reference: forward, dX and dW.

Both GPU kernel families of ``kernels_pallas``: Triton (``backend="gpu"``, f32 and bf16) and Mosaic
GPU (``backend="mosaic_gpu"``, Hopper WGMMA, bf16 and f16, 64-multiple blocks). Each runs
``block_sparse_matmul(impl="pallas", interpret=False)`` on the named edge cases of
``kernels_pallas.testing`` (empty block rows and columns, fully dense, one block, rectangular blocks;
Triton) and on larger problems (64 and 128 blocks, M not a multiple of the row tile), compares y, dX
and dW of ``sum(sin(x @ W))`` with the same loss through the dense matrix in f32 at
``precision="highest"``, and records what ``impl="auto"`` resolves to on this device. Exits 1 when any
case mismatches or fails to compile. Writes ``<out-dir>/gpu_kernel_check_<device>.{json,md}``.

    python benchmarks/gpu_kernel_check.py                 # on a GPU: compiled kernels
    python benchmarks/gpu_kernel_check.py --smoke         # anywhere: one tiny case per family

Without a GPU the kernels run in the interpreters (Triton: ``interpret=True``; Mosaic GPU: its GPU
interpreter), on the edge cases and one Mosaic GPU problem only, and each case is also lowered for
CUDA through ``jax.export`` (no hardware needed), so the lowering rules are exercised too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import machine  # noqa: E402

from kernels_pallas import (  # noqa: E402
    BlockSparseMatrix,
    autotune,
    block_sparse_matmul,
    compat,
    dispatch,
    from_dense,
)
from kernels_pallas.ops import plan_for  # noqa: E402
from kernels_pallas.testing import CASES, make_case, reference, run  # noqa: E402

# Tolerances relative to the largest reference value: f32 allows TF32 dots (10-bit mantissa), 16-bit
# types round inputs and outputs to 8 (bf16) or 11 (f16) bits.
TOLERANCE = {"float32": 1e-2, "bfloat16": 3e-2, "float16": 1e-2}
# name -> (M, K, N, block, density): larger problems than the edge cases.
LARGE = {
    "b64_m300": (300, 1024, 2048, 64, 0.25),
    "b128_m512": (512, 2048, 1024, 128, 0.25),
    "b128_dense_half": (256, 1024, 1024, 128, 0.5),
}
FAMILIES = {"gpu": ("float32", "bfloat16"), "mosaic_gpu": ("bfloat16", "float16")}
CUSTOM_CALLS = {
    "gpu": compat.TRITON_CUSTOM_CALL_TARGETS,
    "mosaic_gpu": compat.MOSAIC_GPU_CUSTOM_CALL_TARGETS,
}


def empty_lines_64(dtype) -> tuple[jax.Array, object]:
    """72 x 192 @ 192 x 256 with 64-blocks: an empty block row, an empty block column, one padding."""
    rng = np.random.default_rng(1)
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], bool)
    w = from_dense(jnp.asarray(rng.standard_normal((192, 256)), dtype), mask, nnz=5)
    return jnp.asarray(rng.standard_normal((72, 192)), dtype), w


def check_case(x, w, dtype_name: str, backend: str, interpret) -> dict:
    """Max error of y, dX and dW relative to the largest reference value, and pass/fail."""
    y_ref, (dx_ref, dw_ref) = reference(x, w)
    y, (dx, dw) = run(x, w, impl="pallas", backend=backend, interpret=interpret)
    errors = {}
    for name, got, want in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)):
        got = np.asarray(got.astype(jnp.float32))
        want = np.asarray(want)
        scale = max(1.0, float(np.abs(want).max()))
        errors[name] = (
            float(np.abs(got - want).max() / scale) if got.shape == want.shape else np.inf
        )
    ok = all(e <= TOLERANCE[dtype_name] for e in errors.values())
    return {"errors": errors, "ok": ok}


def lowers_for_cuda(x, w, backend: str) -> bool:
    """Whether forward + backward lower for CUDA from this (GPU-less) machine through jax.export."""

    def fwd_bwd(x, d):
        def f(x, d):
            wd = BlockSparseMatrix(d, w.indices, w.indptr, w.shape, w.block_shape)
            return block_sparse_matmul(x, wd, impl="pallas", backend=backend, interpret=False)

        y, vjp = jax.vjp(f, x, d)
        return y, vjp(y)

    checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in CUSTOM_CALLS[backend]]
    jax.export.export(jax.jit(fwd_bwd), platforms=["cuda"], disabled_checks=checks)(x, w.data)
    return True


def cases(smoke: bool, large: bool):
    """(name, dtype name, backend, x, w) for every case to check."""
    for backend, dtypes in FAMILIES.items():
        for dtype_name in dtypes[:1] if smoke else dtypes:
            dtype = jnp.dtype(dtype_name)
            if backend == "gpu":
                for name in ["random_empty_lines"] if smoke else sorted(CASES):
                    yield (name, dtype_name, backend, *make_case(name, dtype))
            else:
                yield ("b64_empty_lines", dtype_name, backend, *empty_lines_64(dtype))
            if not large:
                continue
            for name, (m, k, n, block, density) in LARGE.items():
                nnz = max(1, round(density * (k // block) * (n // block)))
                x, _, w = autotune.random_problem(m, (k, n), (block, block), nnz, dtype)
                yield name, dtype_name, backend, x, w


def main(argv: list[str] | None = None) -> int:
    """Check every case; write the results; return the exit status (1 on any failure)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one tiny case per kernel family")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    on_gpu = dispatch.platform() == "gpu"
    start, before = time.perf_counter(), machine.describe()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, dtype_name, backend, x, w in cases(args.smoke, large=on_gpu and not args.smoke):
        row = {
            "case": name,
            "backend": backend,
            "dtype": dtype_name,
            "shape": [x.shape[0], *w.shape],
            "block": list(w.block_shape),
            "nnz": w.nnz,
        }
        try:
            # None: compiled on a GPU, the family's interpreter elsewhere.
            row.update(check_case(x, w, dtype_name, backend, None))
            if not on_gpu:  # no GPU: at least the CUDA lowering of the same problem
                row["lowers_for_cuda"] = lowers_for_cuda(x, w, backend)
            plan = plan_for(x, w, x.dtype, dict(impl="auto"))
            row["auto"] = "/".join((plan.fwd, plan.dx, plan.dw))
        except Exception as err:  # noqa: BLE001 - a kernel that does not compile is a failure
            row.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(out, before, rows, on_gpu, start)  # after every case: a time cap keeps what ran
    slug = before["device_slug"]
    failed = [f"{r['case']}:{r['backend']}:{r['dtype']}" for r in rows if not r["ok"]]
    print(
        f"wrote {out}/gpu_kernel_check_{slug}.{{json,md}}; {len(rows) - len(failed)}/{len(rows)} ok"
    )
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def write(out: Path, before: dict, rows: list[dict], on_gpu: bool, start: float) -> None:
    """Write the JSON and Markdown results of the cases checked so far."""
    meta = {
        **before,
        "mode": "compiled"
        if on_gpu
        else "no GPU: kernels interpreted, CUDA lowering checked through jax.export",
        "seconds": round(time.perf_counter() - start, 1),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    slug = meta["device_slug"]
    (out / f"gpu_kernel_check_{slug}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    (out / f"gpu_kernel_check_{slug}.md").write_text(markdown(meta, rows))


def markdown(meta: dict, rows: list[dict]) -> str:
    """The results as Markdown: one row per case, kernel family and dtype."""
    ok = sum(r["ok"] for r in rows)
    lines = [
        f"# Pallas GPU kernels vs jnp on {meta['device']}",
        "",
        f"{meta['mode']}; {meta['host']}, {meta['cpu_count']} CPUs, jax {meta['jax']}, load average "
        f"{meta['loadavg']}; {meta['time']}, {meta['seconds']} s. Loss sum(sin(x @ W)); errors are "
        "max |kernel - reference| / max(1, max |reference|), reference through the dense matrix in "
        f"f32 at precision=highest; tolerance {TOLERANCE}. Backends: gpu = Triton lowering, "
        f"mosaic_gpu = Mosaic GPU (WGMMA). **{ok}/{len(rows)} ok.**",
        "",
        "| case | backend | dtype | M, K, N | block | nnz | y err | dX err | dW err | ok | "
        "lowers for cuda | auto plan |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r.get("errors", {})
        errs = [f"{e[k]:.1e}" if k in e else "-" for k in ("y", "dx", "dw")]
        verdict = "yes" if r["ok"] else f"**no** {r.get('error', '')}"
        lines.append(
            f"| {r['case']} | {r['backend']} | {r['dtype']} | {', '.join(map(str, r['shape']))} | "
            f"{r['block'][0]}x{r['block'][1]} | {r['nnz']} | {' | '.join(errs)} | {verdict} | "
            f"{'yes' if r.get('lowers_for_cuda') else '-'} | {r.get('auto', '-')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""Block-sparse products in plain XLA: runs on every backend and is the fast path on CPU.

"grouped" layout (measured on a 2-core CPU, see docs/kernels.md): blocks are grouped by the panel
of the dense operand they read (a block row of W for y = x @ W, a block column for dX = dY @ W^T).
Each group is cut into chunks of exact power-of-two sizes (binary decomposition: 11 blocks -> 8 + 2
+ 1), so there is no padding and every chunk is one wide GEMM ``panel (M, b) @ [its blocks side by
side] (b, s * b')``: one panel copy per chunk and GEMM widths that run near dense efficiency. One ``fori_loop`` per chunk
size (trip counts are data-dependent, shapes are not), optionally ``batch`` chunks per step as one
batched dot_general, and each output block is accumulated into the (M, N) f32 result with an in-place
dynamic-update-slice. Gathers of x for wider contractions, one batched dot over all blocks plus a
segment sum, transposed outputs, per-column carries and splitting M all measured slower. dW (SDD)
is grouped the other way round, by block column, so that each chunk's GEMM writes whole blocks.
When grouping buys no wider GEMMs (``default_layout``) the order-free layouts of ``xla_coo`` run
instead: "batched" (one batched GEMM) and "blockwise" (one block per loop step).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


LAYOUTS = ("grouped", "batched", "blockwise")
ORDER_FREE = ("batched", "blockwise")  # layouts that take the blocks in any order (no CSR view)
BLOCKWISE_MAX_M = 512  # the most rows for which default_layout picks "blockwise"


@dataclasses.dataclass(frozen=True)
class XlaConfig:
    """Tunable knobs of the XLA path (see ``autotune``)."""

    max_chunk: int = 8  # largest chunk (a power of two); chunks of max_chunk, ..., 2, 1 blocks
    batch: int = 1  # chunks per loop step, as one batched dot_general (2 helps some shapes)
    layout: str = "grouped"  # one of LAYOUTS: "batched" and "blockwise" are in xla_coo

    @classmethod
    def from_knobs(cls, knobs: dict, **defaults) -> XlaConfig:
        """The config of an autotune entry or candidate (its other keys ignored); unset fields take
        ``defaults``, else the class defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{**defaults, **{k: v for k, v in knobs.items() if k in names}})


def default_layout(nnz: int, grid: tuple[int, int], m: int) -> str:
    """The layout for ``nnz`` stored blocks on a (KB, NB) grid and ``m`` rows when nothing is tuned.

    - "batched" when there are no more blocks than block rows or block columns (a ViT MLP layer at
      90% of 128-blocks: 4 blocks on 3 x 12): the loops would run about one block per step, and
      their fixed cost per step outweighs the batched layout's gathers;
    - "blockwise" when the blocks average under two per block row and per block column and m is at
      most ``BLOCKWISE_MAX_M`` (the 2048-wide MLP at 90%, batch 256: 26 blocks on 16 x 16): grouped
      chunks are then mostly single narrow GEMMs, and the plain loop over blocks skips the chunk
      tables, the block gathers and the CSR view. With more rows (2048^3 at 90%) the grouped
      forward's two-block chunks are usually faster, so grouped stays;
    - "grouped" otherwise.

    Measured on this project's 2-core CPU over the training benchmarks' shapes
    (``benchmarks/results/xla_layout_cpu.md``; whole training steps in
    ``sparse_training_speed_cpu.md``).
    """
    if nnz <= max(grid):
        return "batched"
    if nnz < 2 * min(grid) and m <= BLOCKWISE_MAX_M:
        return "blockwise"
    return "grouped"


def _sizes(max_chunk: int) -> tuple[int, ...]:
    if max_chunk < 1 or max_chunk & (max_chunk - 1):
        raise ValueError(f"max_chunk must be a power of two, got {max_chunk}")
    return tuple(1 << i for i in range(max_chunk.bit_length() - 1, -1, -1))


def chunk_tables(ptr: Array, nnz: int, max_chunk: int) -> list[tuple[int, Array, Array, Array]]:
    """Binary decomposition of the groups ``ptr`` (G+1,) into chunks of consecutive positions.

    Returns, per chunk size s (largest first): (s, first position of each chunk, its group, number of
    chunks). Arrays have the static length ``max(nnz // s, 1)``; only the count is data-dependent.
    """
    num_groups = ptr.shape[0] - 1
    counts = jnp.diff(ptr)
    remaining, offset, tables = counts, jnp.zeros_like(counts), []
    # A chunk never exceeds the stored blocks (nor, then, the static slice sizes below).
    for s in (s for s in _sizes(max_chunk) if s <= nnz):
        per_group = remaining // s
        remaining = remaining - per_group * s
        cum = jnp.cumsum(per_group)
        item = jnp.arange(max(nnz // s, 1), dtype=jnp.int32)
        group = jnp.minimum(jnp.searchsorted(cum, item, side="right"), num_groups - 1)
        first = ptr[group] + offset[group] + (item - (cum[group] - per_group[group])) * s
        offset = offset + per_group * s
        tables.append((s, first.astype(jnp.int32), group.astype(jnp.int32), cum[-1]))
    return tables


def grouped_matmul(
    x: Array,
    data: Array,
    in_ptr: Array,
    out_idx: Array,
    data_idx: Array,
    num_out: int,
    *,
    transpose_blocks: bool,
    out_dtype: jnp.dtype,
    config: XlaConfig = XlaConfig(),
) -> Array:
    """y[:, out_idx[t]] += x[:, g(t)] @ op(data[data_idx[t]]) over positions t grouped by input panel.

    ``in_ptr`` (G+1,) gives each input panel g its range of positions; ``op`` is the identity (forward:
    y = x @ W, panels = block rows of W, CSR order) or a transpose (dX = dY @ W^T, panels = block
    columns, CSC view). Output blocks never written stay zero.
    """
    m = x.shape[0]
    nnz, bk, bn = data.shape
    b_in, b_out = (bn, bk) if transpose_blocks else (bk, bn)
    batch = config.batch

    def chunk_operands(s, first, group, count, c):
        c_safe = jnp.minimum(c, first.shape[0] - 1)
        p0 = first[c_safe]
        panel = jax.lax.dynamic_slice_in_dim(x, group[c_safe] * b_in, b_in, axis=1)
        blocks = jnp.take(data, jax.lax.dynamic_slice_in_dim(data_idx, p0, s), axis=0)
        # Side by side: (b_in, s * b_out), reading each block transposed for dX.
        wide = blocks.transpose(2, 0, 1) if transpose_blocks else blocks.transpose(1, 0, 2)
        wide = wide.reshape(b_in, s * b_out)
        if batch > 1:  # the tail step of a batched loop may hold a chunk past the count
            wide = jnp.where(c < count, wide, jnp.zeros((), wide.dtype))
        return panel, wide, p0

    def make_body(s, first, group, count):
        def body(i, y):
            ops = [chunk_operands(s, first, group, count, i * batch + h) for h in range(batch)]
            if batch == 1:
                prods = [jnp.dot(ops[0][0], ops[0][1], preferred_element_type=jnp.float32)]
            else:
                stacked = jax.lax.dot_general(
                    jnp.stack([o[0] for o in ops]),
                    jnp.stack([o[1] for o in ops]),
                    (((2,), (1,)), ((0,), (0,))),
                    preferred_element_type=jnp.float32,
                )
                prods = [stacked[h] for h in range(batch)]
            for (_, _, p0), prod in zip(ops, prods, strict=True):
                for q in range(s):
                    col = out_idx[jnp.minimum(p0 + q, nnz - 1)] * b_out
                    cur = jax.lax.dynamic_slice_in_dim(y, col, b_out, axis=1)
                    new = cur + prod[:, q * b_out : (q + 1) * b_out]
                    y = jax.lax.dynamic_update_slice_in_dim(y, new, col, axis=1)
            return y

        return body

    y = jnp.zeros((m, num_out * b_out), jnp.float32)
    for s, first, group, count in chunk_tables(in_ptr, nnz, config.max_chunk):
        steps = (count + batch - 1) // batch
        y = jax.lax.fori_loop(0, steps, make_body(s, first, group, count), y)
    return y.astype(out_dtype)


def sdd(
    x: Array,
    dy: Array,
    col_ptr: Array,
    rows: Array,
    perm: Array,
    block_shape: tuple[int, int],
    *,
    out_dtype: jnp.dtype,
    config: XlaConfig = XlaConfig(),
) -> Array:
    """(nnz, bk, bn) blocks of x^T @ dy at the stored positions: dW on stored blocks only.

    Blocks are grouped by block column (the CSC view: offsets ``col_ptr``, block ``rows``, ``perm``
    into the CSR data order). A chunk of s blocks of one column is one GEMM ``[x^T row panels
    stacked] (s * bk, M) @ dy panel (M, bn)`` whose output is the s blocks themselves. How x^T is
    formed depends on how often the blocks read each of x's KB row panels:

    - nnz < KB: only the panels of the stored blocks are transposed, one per block in CSC order;
    - KB <= nnz < 2 KB: nothing is transposed; a chunk gathers its (M, s * bk) panels of x and the
      GEMM contracts over M in place (a transposing copy of x, with its producer, often an activation,
      fused in, costs XLA:CPU more than these GEMMs; see docs/kernels.md);
    - else x^T is transposed once, whole, and the chunks gather its row panels.

    (Grouping by block row with a transposed-lhs GEMM per chunk measured 1.3-2x slower: its small
    outputs leave a core idle.)
    """
    bk, bn = block_shape
    nnz = rows.shape[0]
    m = x.shape[0]
    kb = x.shape[1] // bk
    if nnz < kb:
        xt = jnp.take(x.reshape(m, kb, bk), rows, axis=1, mode="clip").transpose(1, 2, 0)

        def tall_of(p0, s):
            return jax.lax.dynamic_slice_in_dim(xt, p0, s, axis=0).reshape(s * bk, m), 1
    elif nnz < 2 * kb:
        x3 = x.reshape(m, kb, bk)

        def tall_of(p0, s):
            idx = jax.lax.dynamic_slice_in_dim(rows, p0, s)
            return jnp.take(x3, idx, axis=1, mode="clip").reshape(m, s * bk), 0
    else:
        xt = x.T.reshape(kb, bk, m)

        def tall_of(p0, s):
            idx = jax.lax.dynamic_slice_in_dim(rows, p0, s)
            return jnp.take(xt, idx, axis=0, mode="clip").reshape(s * bk, m), 1

    def make_body(s, first, group):
        def body(i, out):
            p0 = first[i]
            panel = jax.lax.dynamic_slice_in_dim(dy, group[i] * bn, bn, axis=1)
            tall, over_m = tall_of(p0, s)  # (s * bk, M) or (M, s * bk): contract over M
            dims = (((over_m,), (0,)), ((), ()))
            blk = jax.lax.dot_general(tall, panel, dims, preferred_element_type=jnp.float32)
            blk = blk.reshape(s, bk, bn).astype(out_dtype)
            return jax.lax.dynamic_update_slice_in_dim(out, blk, p0, axis=0)

        return body

    out = jnp.zeros((nnz, bk, bn), out_dtype)
    for s, first, group, count in chunk_tables(col_ptr, nnz, config.max_chunk):
        out = jax.lax.fori_loop(0, count, make_body(s, first, group), out)
    # CSC position i holds data index perm[i]: back to the CSR order of the stored blocks.
    inverse = jnp.zeros((nnz,), jnp.int32).at[perm].set(jnp.arange(nnz, dtype=jnp.int32))
    return out[inverse]

"""sparsejax kernels: one block-sparse weight format, its matmul (Pallas TPU/GPU + XLA) and a Flax layer.

```python
from kernels_pallas import BlockSparseMatrix, from_dense, block_sparse_matmul, BlockSparseDense
w = from_dense(kernel, block_mask)          # (K, N) dense + (K/bk, N/bn) bool mask
y = block_sparse_matmul(x, w)               # y = x @ W, differentiable (custom VJP)
```
Compressed training (params = stored blocks, topology in the sparse-training state):
``CompressedBlockDense`` (and ``CompressedBlockMLP``, two of them fused) +
``compressed_algorithm(sj.rigl, dense_like, ...)``.
"""

from kernels_pallas.blocks import (
    as_block_shape,
    block_mask_from_dense,
    block_mask_from_elements,
    block_norms,
    drop_grow_blocks,
    expand_block_mask,
    top_block_positions,
    topk_block_mask,
)
from kernels_pallas.compressed import CompressedBlockDense, CompressedWeight, compressed_matmul
from kernels_pallas.compressed_mlp import CompressedBlockMLP
from kernels_pallas.compressed_training import (
    CompressedState,
    compressed_algorithm,
    compressed_state,
    from_masked_dense,
    masked_dense,
)
from kernels_pallas.format import (
    BlockSparseMatrix,
    CscView,
    block_mask_of,
    csc_view,
    from_dense,
    from_positions,
    to_dense,
)
from kernels_pallas.layer import BlockSparseDense, nnz_for_density, positions_from_block_mask
from kernels_pallas.masked import masked_kernel_matmul
from kernels_pallas.ops import block_sparse_matmul

__all__ = [
    "BlockSparseDense",
    "CompressedBlockDense",
    "CompressedBlockMLP",
    "CompressedState",
    "CompressedWeight",
    "BlockSparseMatrix",
    "CscView",
    "as_block_shape",
    "block_mask_from_dense",
    "block_mask_from_elements",
    "block_mask_of",
    "block_norms",
    "block_sparse_matmul",
    "compressed_algorithm",
    "compressed_matmul",
    "compressed_state",
    "csc_view",
    "drop_grow_blocks",
    "expand_block_mask",
    "from_dense",
    "from_masked_dense",
    "from_positions",
    "masked_dense",
    "masked_kernel_matmul",
    "nnz_for_density",
    "positions_from_block_mask",
    "to_dense",
    "top_block_positions",
    "topk_block_mask",
]

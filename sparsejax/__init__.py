"""sparsejax: sparse training in JAX as pure optax transforms over functional mask pytrees.

Typical use::

    import optax, sparsejax as sj
    tx = sj.sparsify(optax.adam(1e-3), sj.rigl(sparsity=0.9, update_every=100, end_step=7500))
    state = tx.init(params)
    loss = lambda p: loss_fn(model.apply(sj.forward_params(p, state), x), y)
"""

from sparsejax import distributions, masks, metrics, schedules, topk, tracking
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
from sparsejax.algorithms.ste import sr_ste, sr_ste_decay, ste
from sparsejax.core import MaskUpdate, SparseAlgorithm, SparseState, sparsify
from sparsejax.distributions import leaf_sparsities
from sparsejax.forward import masked_forward, straight_through
from sparsejax.layout import Layout
from sparsejax.masks import (
    DENSE,
    apply_masks,
    create_masks,
    is_dense,
    magnitude_mask,
    nm_mask,
    pack_masks,
    random_mask,
    unpack_masks,
)
from sparsejax.metrics import summarize
from sparsejax.opt_state import keep_where, reset_where
from sparsejax.registry import ALGORITHMS, from_config, register_algorithm
from sparsejax.snapshots import load_masks, save_masks
from sparsejax.state import forward_params, masks_of, sparse_state, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "DENSE",
    "Layout",
    "MaskUpdate",
    "SparseAlgorithm",
    "SparseState",
    "apply_masks",
    "create_masks",
    "dense",
    "distributions",
    "forward_params",
    "from_config",
    "global_magnitude",
    "gmp",
    "granet",
    "is_dense",
    "leaf_sparsities",
    "load_masks",
    "magnitude_mask",
    "maskllm",
    "masks",
    "masked_forward",
    "masks_of",
    "metrics",
    "nm_mask",
    "pack_masks",
    "pgf",
    "random_mask",
    "register_algorithm",
    "keep_where",
    "reset_where",
    "rigl",
    "save_masks",
    "schedules",
    "set_sparse",
    "snip",
    "spdf",
    "sparse_state",
    "sparsify",
    "sr_ste",
    "sr_ste_decay",
    "static",
    "straight_through",
    "ste",
    "summarize",
    "topk",
    "tracking",
    "unpack_masks",
    "value_and_grad",
]

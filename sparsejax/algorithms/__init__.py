"""One module per algorithm family; each builds a ``SparseAlgorithm`` (see ``sparsejax.core``)."""

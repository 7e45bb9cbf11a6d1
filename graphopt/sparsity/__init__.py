"""Unstructured weight sparsity: scores, masks, schedules and the stored size of sparse weights.

``layers`` finds the weights, ``scores`` ranks them (magnitude, Taylor), ``select`` turns
scores into masks (per layer, global, N:M) and holds the gradual schedule, ``masks`` stores
masks on the graph and holds them during training, ``storage`` counts the bytes of sparse
encodings. The ``sparsify`` pass (``graphopt.passes.sparsify``) composes them. Submodules are
imported where they are used: ``graphopt.recovery`` reads ``masks`` and must not import the
pass registry through this package.
"""

"""Weight sharing with a codebook (Han et al., Deep Compression): k-means, the codebook forms
in the graph, training the centroids, and the stored size with entropy coding.

``kmeans`` fits the codebooks, ``form`` writes them into the graph (gather form) or keeps them
beside dense weights (dense form), ``training`` ties weights to centroids while recovery
trains, ``storage`` counts bytes (b-bit indices, Huffman, Deep Compression's sparse coding).
The ``cluster`` pass (``graphopt.passes.cluster``) composes them. Submodules are imported where
used, so ``graphopt.recovery`` can import ``training`` without the pass registry.
"""

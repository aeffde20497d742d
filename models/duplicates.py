"""Near-duplicate images, found by embedding similarity, kept together in every split."""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Cosine similarity of *centred* features above which two images count as near-duplicates.
# Centring matters: raw pooled CNN features of one domain are all alike (distinct galaxy
# photos reach 0.97 raw, at most 0.78 centred), while a re-saved, slightly cropped or resized
# copy of an image stays above 0.9 centred.
NEAR_DUPLICATE_COSINE = 0.92


def near_duplicate_groups(features: np.ndarray, threshold: float = NEAR_DUPLICATE_COSINE) -> np.ndarray:
    """A group id per row; rows linked by a chain of similar pairs share one id."""
    n = len(features)
    if n < 2:
        return np.zeros(n, int)
    centred = features - features.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1.0)
    sim = unit @ unit.T
    i, j = np.nonzero(np.triu(sim >= threshold, k=1))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]

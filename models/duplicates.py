"""Near-duplicate images: by perceptual hash at upload, by embedding similarity in training.

Two detectors, for two moments. At upload there are no features yet (and the web process never
runs TensorFlow), so a perceptual hash finds re-saved, resized, recompressed or lightly edited
copies, cheaply. In training, embeddings also catch copies the hash misses (crops, colour
changes); those groups are kept together in every split.
"""
from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Cosine similarity of *centred* features above which two images count as near-duplicates.
# Centring matters: raw pooled CNN features of one domain are all alike (distinct galaxy
# photos reach 0.97 raw, at most 0.78 centred), while a re-saved, slightly cropped or resized
# copy of an image stays above 0.9 centred.
NEAR_DUPLICATE_COSINE = 0.92


# Hamming distance (of 64 bits) up to which two perceptual hashes count as one picture. A
# resized, JPEG-recompressed or 5%-cropped copy of a photo lands at 2-4; distinct images of one
# homogeneous domain (200 galaxies: 19,900 pairs) never came closer than 8.
PHASH_MAX_DISTANCE = 6
PAIRS_PER_BLOCK = 1 << 18


def perceptual_hash(image: Image.Image) -> int:
    """A 64-bit DCT perceptual hash (pHash) of a decoded image, as an int."""
    return int(str(imagehash.phash(image)), 16)


def hash_groups(hashes, max_distance: int = PHASH_MAX_DISTANCE) -> np.ndarray:
    """A group id per hash; hashes linked by a chain of pairs within `max_distance` share one."""
    codes = np.asarray(hashes, dtype=np.uint64)
    n = len(codes)
    if n < 2:
        return np.zeros(n, int)
    i, j = [], []
    # Memory is bounded whatever the project's size (it runs on every upload): at most
    # PAIRS_PER_BLOCK pairs at a time, 9 bytes each.
    block = max(1, PAIRS_PER_BLOCK // n)
    for start in range(0, n, block):
        distance = np.bitwise_count(codes[start:start + block, None] ^ codes[None, :])
        rows, cols = np.nonzero(distance <= max_distance)
        keep = cols > rows + start
        i.append(rows[keep] + start)
        j.append(cols[keep])
    return _components(np.concatenate(i), np.concatenate(j), n)


def _components(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


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
    return _components(i, j, n)

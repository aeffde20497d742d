"""Active suggestions: which unlabelled images of a batch would help the model most once
labelled (pure NumPy).

The rule (uncertainty, made diverse):

1. Uncertainty is the **margin**: the ensemble's top class probability minus its second
   (`margins`). A small margin means the model hesitates between two classes, so the label
   of that image moves the decision boundary most.
2. Only the `pool` lowest-margin images are candidates (`UncertainPool` keeps them while a
   batch streams through, so memory does not grow with the batch).
3. Among them, a greedy, uncertainty-weighted farthest-point pick (`select`): the first is
   the lowest margin; each next one maximises ``(1 - margin) * distance to the nearest image
   already picked``, the distance being Euclidean between `embed`ded head inputs (cosine
   geometry, in [0, 2]). A near-copy of a picked image has distance ~0, so it comes after
   every image unlike those picked: the suggestions cover different regions of the feature
   space instead of one cluster of look-alikes, still favouring the uncertain.

This is Cluster-Margin's idea (Citovsky et al., 2021: margin first, then spread) with a
k-center step instead of clustering, because a batch's pool is small.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping

import numpy as np

from models.features import unit_length

SUGGESTIONS = 20  # images suggested per batch
POOL_FACTOR = 5  # candidates per suggestion: the pool is the POOL_FACTOR * k least certain


def margins(probabilities: np.ndarray) -> np.ndarray:
    """(n,) top-1 minus top-2 probability of each row of (n, C) `probabilities` (C >= 2);
    1.0 for a single class."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape[1] < 2:
        return np.ones(len(p))
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def embed(per_backbone: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n, sum d) float32: each backbone's (n, d) features L2-normalised and scaled by
    1/sqrt(#backbones), side by side, so the squared distance between two images is the mean
    over backbones of their squared cosine (chord) distances, and every row has norm 1."""
    parts = list(per_backbone.values())
    scale = 1.0 / np.sqrt(len(parts))
    out = []
    for x in parts:
        out.append(scale * unit_length(np.asarray(x, dtype=np.float32).reshape(len(x), -1)))
    return np.concatenate(out, axis=1)


def select(margin: np.ndarray, embeddings: np.ndarray, k: int) -> list[int]:
    """Up to `k` row indices of the candidates, in the order to label them (the module's
    rule, step 3). Ties go to the earlier row."""
    margin = np.asarray(margin, dtype=np.float64)
    n = len(margin)
    if n == 0 or k <= 0:
        return []
    x = np.asarray(embeddings, dtype=np.float64)
    weight = 1.0 - np.clip(margin, 0.0, 1.0) + 1e-9  # a sure image still ranks by distance
    first = int(np.argmin(margin))
    chosen = [first]
    nearest = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < min(k, n):
        priority = weight * nearest
        priority[chosen] = -1.0
        best = int(np.argmax(priority))
        chosen.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[best], axis=1))
    return chosen


class UncertainPool:
    """The `size` lowest-margin items offered so far, with their embeddings (a bounded heap:
    memory is O(size), whatever the number offered). Ties keep the earlier item."""

    def __init__(self, size: int):
        self.size = int(size)
        self._heap: list[tuple[float, int, object, np.ndarray]] = []  # (-margin, -order, key, e)
        self._order = 0

    def offer(self, key, margin: float, embedding: np.ndarray) -> None:
        """Consider one item (`key` is the caller's id for it, e.g. a row index)."""
        self._order += 1
        item = (-float(margin), -self._order, key, np.asarray(embedding, dtype=np.float32))
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:  # less certain than the surest kept one
            heapq.heapreplace(self._heap, item)

    def __len__(self) -> int:
        return len(self._heap)

    def select(self, k: int) -> list[tuple[object, float]]:
        """[(key, margin)] of up to `k` suggestions, in the order to label them (`select`)."""
        if not self._heap:
            return []
        items = sorted(self._heap, key=lambda t: (-t[0], -t[1]))  # lowest margin, earliest
        margin = np.array([-t[0] for t in items])
        chosen = select(margin, np.stack([t[3] for t in items]), k)
        return [(items[i][2], float(margin[i])) for i in chosen]


def suggest(probabilities: np.ndarray, embeddings: np.ndarray, k: int = SUGGESTIONS,
            pool: int | None = None) -> list[int]:
    """The whole rule on in-memory arrays: indices of up to `k` of the (n, C)
    `probabilities`' rows to label, in order; `embeddings` (n, d) as `embed` makes them;
    `pool` defaults to POOL_FACTOR * k."""
    keep = UncertainPool(pool if pool is not None else POOL_FACTOR * k)
    for i, (m, e) in enumerate(zip(margins(probabilities), embeddings)):
        keep.offer(i, m, e)
    return [int(i) for i, _ in keep.select(k)]

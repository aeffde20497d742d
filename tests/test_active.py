"""The active-suggestion rule (`models.active`): least certain first, spread over the
feature space rather than piled on look-alikes, with memory bounded by the pool."""
from __future__ import annotations

import numpy as np
import pytest

from models.active import UncertainPool, embed, margins, select, suggest

pytestmark = pytest.mark.unit


def probs_with_margin(m: np.ndarray, classes: int = 3) -> np.ndarray:
    """(n, C) rows whose top-2 margin is exactly `m`."""
    m = np.asarray(m, dtype=float)
    rest = (1.0 - m) / 2  # top = rest + m, second = rest, the others 0
    p = np.zeros((len(m), classes))
    p[:, 0], p[:, 1] = rest + m, rest
    return p


def test_margin_is_top_minus_second():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45], [0.0, 1.0, 0.0]])
    assert margins(p) == pytest.approx([0.2, 0.0, 1.0])
    assert margins(np.ones((2, 1))).tolist() == [1.0, 1.0]


def test_lowest_margin_first_when_all_images_differ():
    rng = np.random.default_rng(0)
    m = rng.permutation(np.linspace(0.02, 0.98, 30))
    e = np.eye(30)  # every pair equally far apart: only the margin decides
    order = suggest(probs_with_margin(m), e, k=10)
    assert order == list(np.argsort(m)[:10])
    # a confident image is never suggested before an uncertain one
    assert max(m[order]) < min(np.delete(m, order))


def test_diversity_picks_other_clusters_before_near_duplicates():
    rng = np.random.default_rng(1)
    centres = np.eye(4) * 10
    # cluster 0 holds the 10 least certain images, all near-copies of one another
    x = np.concatenate([centres[c] + 0.01 * rng.normal(size=(10, 4)) for c in range(4)])
    m = np.concatenate([np.linspace(0.01, 0.05, 10), np.linspace(0.3, 0.4, 10),
                        np.linspace(0.35, 0.45, 10), np.linspace(0.2, 0.3, 10)])
    e = embed({"a": x})
    picked = suggest(probs_with_margin(m), e, k=4, pool=40)
    assert picked[0] == 0  # the least certain comes first
    assert sorted(i // 10 for i in picked) == [0, 1, 2, 3]  # one per cluster
    # plain margin ranking would have picked four look-alikes of cluster 0
    assert all(i // 10 == 0 for i in np.argsort(m)[:4])


def test_diversity_stays_among_the_uncertain():
    """A far-away but sure image is not a candidate: only the pool's least certain are."""
    x = np.array([[1.0, 0.0], [1.0, 0.01], [1.0, -0.05], [0.0, 1.0]])
    m = np.array([0.05, 0.06, 0.07, 0.99])
    assert suggest(probs_with_margin(m), embed({"a": x}), k=2, pool=3) == [0, 2]


def test_embed_averages_backbones_on_unit_rows():
    a = np.array([[3.0, 4.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    e = embed({"a": a, "b": b})
    assert e.shape == (2, 5) and np.linalg.norm(e, axis=1) == pytest.approx([1.0, 1.0])
    # squared distance = mean of the backbones' squared chord distances
    chord = lambda u, v: np.sum((u / np.linalg.norm(u) - v / np.linalg.norm(v)) ** 2)  # noqa: E731
    assert np.sum((e[0] - e[1]) ** 2) == pytest.approx((chord(a[0], a[1]) + chord(b[0], b[1])) / 2)


def test_pool_keeps_the_least_certain_and_breaks_ties_by_order():
    pool = UncertainPool(3)
    for key, m in enumerate([0.9, 0.1, 0.5, 0.1, 0.05, 0.7, 0.1]):
        pool.offer(key, m, np.array([float(key), 1.0]))
    assert len(pool) == 3
    kept = {k for k, _ in pool.select(3)}
    assert kept == {4, 1, 3}  # 0.05, then the two earliest of the three 0.1s
    assert pool.select(1) == [(4, pytest.approx(0.05))]
    assert UncertainPool(5).select(3) == [] and select(np.array([]), np.zeros((0, 2)), 3) == []

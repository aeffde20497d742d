"""The 1000 ImageNet-1k class names, offline.

``models/data/imagenet_classes.json`` is a JSON list indexed by class id, in the standard
(sorted-WordNet-id) order used by Keras/TF/torch ImageNet models: the first WordNet synonym of
each synset, i.e. Keras's ``imagenet_class_index.json`` names with spaces instead of
underscores (0 "tench", 281 "tabby", 285 "Egyptian cat", 504 "coffee mug", 967 "espresso",
968 "cup"; "crane" and "maillot" each appear twice, as in the original).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

_CLASSES_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.json"


@lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    names = json.loads(_CLASSES_FILE.read_text(encoding="utf-8"))
    if len(names) != 1000:
        raise ValueError(f"{_CLASSES_FILE} holds {len(names)} names, expected 1000")
    return tuple(names)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, indexed by class id."""
    return list(_labels())


def top_k(probabilities, k: int = 5) -> list[tuple[int, str, float]]:
    """``(class id, name, probability)`` of the ``k`` most likely classes of one 1000-vector."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.size != 1000:
        raise ValueError(f"expected 1000 probabilities, got {p.size}")
    names = _labels()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), names[int(i)], float(p[i])) for i in order]

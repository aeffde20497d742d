"""The bottleneck cache: one forward pass per (image sha256, backbone, view), ever.

Features live on disk as one small `.npy` per key, written to a temporary name and renamed
into place, so a crash mid-write never leaves a half file under a real key, and any number of
processes can share one cache folder. A backbone is only built when something is missing:
re-training on cached images never touches TensorFlow's forward pass.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.images import resize_for_model
from models.registry import BACKBONES
from models.runtime import worth_converting

# A view is a deterministic transform of the decoded image before resizing; "orig" is the image.
VIEWS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "orig": lambda im: im,
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "vflip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "rot90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "rot180": lambda im: im.transpose(Image.Transpose.ROTATE_180),
    "rot270": lambda im: im.transpose(Image.Transpose.ROTATE_270),
    "transpose": lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    "transverse": lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    # A centred 80% crop, for scale: a closer look at the middle of the picture.
    "zoom": lambda im: im.crop((im.width // 10, im.height // 10,
                                im.width - im.width // 10, im.height - im.height // 10)),
}

DIHEDRAL = ("orig", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse")
# Candidate sets of views, cheapest first. A head sees the mean feature over its set's views
# (test-time augmentation in feature space); which set a project uses is chosen by CV.
VIEW_POLICIES: dict[str, tuple[str, ...]] = {
    "none": ("orig",),
    "dihedral": DIHEDRAL,
    "flips": ("orig", "hflip"),  # offered, not tried by default: it rarely beat both others
}
DEFAULT_POLICIES = ("none", "dihedral")

# The extraction budget: the most forward-pass work per image (GFLOPs, views x the backbone's
# cost) a default view policy may ask for. 16 is about two ResNet50 passes: every
# EfficientNet-Lite backbone can afford all 8 dihedral views (Lite2: 8 x 1.8 = 14.4), while
# ResNet50, VGG16 and Xception would pay 8x (62-246 GFLOPs) for them, and are offered "none".
VIEW_BUDGET_GFLOPS = 16.0
# The same budget for a whole training: training images x views x GFLOPs. A project of many
# images pays 8x its extraction for the views (900 images through Lite0: 7,200 passes, about
# two minutes on 2 cores instead of 15 s), so past this the views are not offered. 4,000 keeps
# them up to 617 training images on Lite0, 396 on Lite1 and 277 on Lite2 (digits' 190 images
# on Lite2: 2,736), and drops them for 300 classes x 3 images on Lite0 (5,832).
TRAINING_VIEW_BUDGET_GFLOPS = 4000.0


def view_policies_for(gflops: float, policies: Sequence[str] = DEFAULT_POLICIES,
                      budget: float = VIEW_BUDGET_GFLOPS, n_images: int = 0,
                      training_budget: float = TRAINING_VIEW_BUDGET_GFLOPS) -> tuple[str, ...]:
    """The candidate view policies a backbone costing `gflops` per view is offered by default,
    for a training on `n_images` training images.

    A policy is offered when its views fit the extraction budget per image (len(views) x
    gflops <= `budget`) and per training (n_images x len(views) x gflops <=
    `training_budget`); the cheapest policy is always offered, so a backbone dearer than the
    budget still gets one. Among the offered policies, CV on the project's images picks the
    one the head uses (a project where a view hurts does not use it): the choice stays
    data-driven where it is affordable, and neither a heavy backbone nor a project of
    hundreds of images pays 8 forward passes per image for it.
    """
    unknown = [p for p in policies if p not in VIEW_POLICIES]
    if unknown or not policies:
        raise ValueError(f"unknown view policies {unknown}; choose from {list(VIEW_POLICIES)}")
    ordered = sorted(dict.fromkeys(policies), key=lambda p: len(VIEW_POLICIES[p]))
    offered = [p for p in ordered if len(VIEW_POLICIES[p]) * gflops <= budget
               and n_images * len(VIEW_POLICIES[p]) * gflops <= training_budget]
    return tuple(offered or ordered[:1])

# Feature transforms a head may be given (chosen by CV, like the views). A transform sees the
# whole feature vector and the widths of its parts (`blocks`, see registry.BackboneSpec):
# "raw" and "sqrt" use the classic top features (the first part) only. "sqrt" is the power
# transform of few-shot learning: pooled ReLU features are skewed, their square roots less so.
# "multiscale" adds the pooled earlier stages; each part is scaled to unit length per image,
# so that 40 mid-level numbers weigh as much as 1280 top ones.
def _top(x: np.ndarray, blocks: Sequence[int]) -> np.ndarray:
    return x[..., :blocks[0]]


def unit_length(x: np.ndarray) -> np.ndarray:
    """`x` with each row (last axis) scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _multiscale(x: np.ndarray, blocks: Sequence[int]) -> np.ndarray:
    ends = np.cumsum(blocks)
    parts = [np.sqrt(np.maximum(_top(x, blocks), 0.0))]
    parts += [x[..., start:end] for start, end in zip(ends[:-1], ends[1:])]
    return np.concatenate([unit_length(p) for p in parts], axis=-1)


TRANSFORMS: dict[str, Callable[[np.ndarray, Sequence[int]], np.ndarray]] = {
    "raw": _top,
    "sqrt": lambda x, blocks: np.sqrt(np.maximum(_top(x, blocks), 0.0)),
    "multiscale": _multiscale,
}


def transforms_for(blocks: Sequence[int]) -> tuple[str, ...]:
    """The transforms worth trying on features made of parts of these widths."""
    # Raw pooled features were never chosen over their square roots where earlier stages are
    # offered too (0 of 30 galaxy and digits draws, issue 14): a candidate costs its CV.
    return ("sqrt", "multiscale") if len(blocks) > 1 else ("raw", "sqrt")


def transform(x: np.ndarray, name: str, blocks: Sequence[int] | None = None) -> np.ndarray:
    """Apply transform `name` to (..., d) features whose parts have widths `blocks`
    (default: one part, the whole vector)."""
    return TRANSFORMS[name](x, tuple(blocks) if blocks else (x.shape[-1],))


def head_inputs(policies: Sequence[str], transforms: Sequence[str] = ("raw", "sqrt")) -> list[str]:
    """Candidate head inputs, cheapest first: "<view policy>" or "<view policy>+<transform>"."""
    return [p if t == "raw" else f"{p}+{t}" for p in policies for t in transforms]


def parse_head_input(name: str) -> tuple[tuple[str, ...], str]:
    """(views, transform) of a head input name made by `head_inputs`."""
    policy, _, transform_name = name.partition("+")
    return VIEW_POLICIES[policy], transform_name or "raw"


def head_input(per_view: dict[str, np.ndarray], name: str,
               blocks: Sequence[int] | None = None) -> np.ndarray:
    """A head's input: the transform of the mean feature over its views."""
    views, transform_name = parse_head_input(name)
    return transform(np.mean([per_view[v] for v in views], axis=0), transform_name, blocks)


Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Item:
    """An image the cache can key and, on a miss, decode: `load()` returns an RGB PIL image."""

    sha256: str
    load: Callable[[], Image.Image]


def _cache_key(backbone: str) -> str:
    spec = BACKBONES.get(backbone)
    return spec.cache_key if spec else backbone


class FeatureCache:
    """Feature vectors on disk under `root/<backbone key>/<view>/<sha[:2]>/<sha>.npy` (the key
    is the registry's `cache_key`, which changes whenever a backbone's feature vector does)."""

    def __init__(self, root: str | Path, runtime_cache_dir: str | Path | None = None):
        self.root = Path(root)
        self.runtime_cache_dir = runtime_cache_dir  # where conversions are kept (runtime.py)
        self.computed = 0  # forward passes this instance has run (for tests and benchmarks)

    def path(self, backbone: str, view: str, sha256: str) -> Path:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}")
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / _cache_key(backbone) / view / sha256[:2] / f"{sha256}.npy"

    def get(self, backbone: str, view: str, sha256: str) -> np.ndarray | None:
        path = self.path(backbone, view, sha256)
        try:
            return np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, EOFError, OSError):
            return None  # absent, or unreadable: treated as a miss and recomputed

    def put(self, backbone: str, view: str, sha256: str, vector: np.ndarray) -> None:
        path = self.path(backbone, view, sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(vector, np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(
        self,
        backbone: str,
        items: Sequence[Item],
        make_backbone: Callable[[], object],
        *,
        view: str = "orig",
        progress: Progress | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Features of `items` for `backbone` and one `view`: see `get_or_compute_views`."""
        return self.get_or_compute_views(backbone, items, make_backbone, (view,),
                                         progress=progress, batch_size=batch_size)[view]

    def get_or_compute_views(
        self,
        backbone: str,
        items: Sequence[Item],
        make_backbone: Callable[[], object],
        views: Sequence[str] = ("orig",),
        *,
        progress: Progress | None = None,
        batch_size: int = 32,
    ) -> dict[str, np.ndarray]:
        """{view: (len(items), feature_dim) features} of `items` for `backbone`.

        Cached vectors are read; for the rest, each image is decoded once (in threads) for all
        its missing views, run through `make_backbone()` (called at most once, and only on a
        miss; it returns an object with `input_size` and `features(pixels)`) in batches of
        about `batch_size`, and stored. `progress(done, total)` counts (image, view) pairs: it
        is called after the cached ones are read and after each batch.
        """
        for view in views:
            if view not in VIEWS:
                raise ValueError(f"unknown view {view!r}")
        found = {(i, v): self.get(backbone, v, item.sha256)
                 for v in views for i, item in enumerate(items)}
        todo: dict[int, list[str]] = {}
        for (i, v), vec in found.items():
            if vec is None:
                todo.setdefault(i, []).append(v)
        total = len(found)
        done = total - sum(len(vs) for vs in todo.values())
        if progress:
            progress(done, total)
        if todo:
            model = make_backbone()
            size = model.input_size
            if worth_converting(total - done) and hasattr(model, "use_fastest_runtime"):
                model.use_fastest_runtime(self.runtime_cache_dir)

            def pixels(index: int) -> list[tuple[int, str, np.ndarray]]:
                image = items[index].load()
                return [(index, v, resize_for_model(VIEWS[v](image), size)) for v in todo[index]]

            per_chunk = max(1, batch_size // len(views))
            pending = sorted(todo)
            chunks = [pending[i:i + per_chunk] for i in range(0, len(pending), per_chunk)]
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                # Decode the next chunk while the backbone runs on this one.
                ahead = [pool.submit(pixels, i) for i in chunks[0]]
                for k in range(len(chunks)):
                    rows = [row for future in ahead for row in future.result()]
                    following = chunks[k + 1] if k + 1 < len(chunks) else []
                    ahead = [pool.submit(pixels, i) for i in following]
                    vectors = model.features(np.stack([r[2] for r in rows]), batch_size=batch_size)
                    for (index, view, _), vector in zip(rows, vectors):
                        self.put(backbone, view, items[index].sha256, vector)
                        found[index, view] = vector
                    self.computed += len(rows)
                    done += len(rows)
                    if progress:
                        progress(done, total)
        return {v: (np.stack([found[i, v] for i in range(len(items))]).astype(np.float32)
                    if items else np.zeros((0, 0), np.float32)) for v in views}

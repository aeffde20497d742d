"""Perceptual-hash near-duplicates (the upload-time detector of models.duplicates)."""
from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from skimage import data

from models.duplicates import PAIRS_PER_BLOCK, PHASH_MAX_DISTANCE, hash_groups, perceptual_hash

pytestmark = pytest.mark.unit


def _jpeg_roundtrip(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_edited_copies_are_grouped_and_distinct_photos_are_not():
    cat = Image.fromarray(data.chelsea()).convert("RGB")
    copies = [
        cat,
        _jpeg_roundtrip(cat.resize((cat.width // 3, cat.height // 3)), 50),  # resized, recompressed
        ImageEnhance.Brightness(cat).enhance(1.15),                          # brightened
        cat.crop((8, 8, cat.width - 8, cat.height - 8)),                     # trimmed border
    ]
    others = [Image.fromarray(getattr(data, name)()).convert("RGB")
              for name in ("coffee", "rocket", "astronaut")]
    groups = hash_groups([perceptual_hash(im) for im in copies + others])
    assert len(set(groups[:4])) == 1
    assert len(set(groups)) == 4  # the three other photos each on their own


def test_hash_groups_links_chains_and_respects_the_distance():
    base = 0
    near = (1 << PHASH_MAX_DISTANCE) - 1             # exactly PHASH_MAX_DISTANCE bits away
    far = (1 << (PHASH_MAX_DISTANCE + 1)) - 1 << 20  # one bit more than allowed from base
    chain = near | (1 << 40)                         # one bit from `near`
    groups = hash_groups([base, near, far, chain])
    assert groups[0] == groups[1] == groups[3] != groups[2]
    assert list(hash_groups([])) == [] and list(hash_groups([5])) == [0]


def test_hash_groups_is_chunked_but_complete():
    rng = np.random.default_rng(0)
    hashes = [int(h) for h in rng.integers(0, 2**63, 1100, dtype=np.int64)]
    hashes[1050] = hashes[3] ^ 0b101  # a pair split across blocks of rows
    groups = hash_groups(hashes)
    assert groups[1050] == groups[3]
    assert len(set(groups)) == 1099


def test_hash_groups_memory_does_not_grow_with_the_number_of_images():
    """It runs on every upload over the whole project: 5,000 images must not take (as they
    once did) hundreds of MB at once."""
    hashes = [int(h) for h in np.random.default_rng(1).integers(0, 2**63, 5000, dtype=np.int64)]
    tracemalloc.start()
    try:
        hash_groups(hashes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * PAIRS_PER_BLOCK * 9, peak  # a few blocks' worth, not 5,000 x 5,000

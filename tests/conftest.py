"""Shared test fixtures. Tests never touch the network: any non-loopback connection fails."""
import ipaddress
import socket

import pytest

_real_connect = socket.socket.connect


def _loopback_only(sock, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None:
        try:
            allowed = ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = host == "localhost"
        if not allowed:
            raise OSError(f"tests may not reach the network ({host})")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


@pytest.fixture
def empty_keras_home(tmp_path, monkeypatch):
    """A KERAS_HOME with no cached weights, and no configured weights folder."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("TRANSFERLAB_WEIGHTS_DIR", raising=False)
    return home


def _photo_variants(photo, count, seed):
    """`count` distinct JPEG-able variants of one photo: crops, flips, brightness."""
    import numpy as np
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    base = Image.fromarray(photo).convert("RGB")
    w, h = base.size
    out = []
    for i in range(count):
        cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = base.crop((x, y, x + cw, y + ch)).resize((160, 120))
        if i % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.7, 1.3))))
    return out


PHOTO_CLASSES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """A folder of class folders: cat, coffee, rocket; 6 JPEGs each, from scikit-image photos."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    for seed, (label, photo) in enumerate(PHOTO_CLASSES.items()):
        (root / label).mkdir()
        for i, im in enumerate(_photo_variants(getattr(data, photo)(), 6, seed)):
            im.save(root / label / f"{label}_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def photo_test_folder(tmp_path_factory):
    """A separate test set in the same classes, 3 images each, different crops."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos_test")
    for seed, (label, photo) in enumerate(PHOTO_CLASSES.items()):
        (root / label).mkdir()
        for i, im in enumerate(_photo_variants(getattr(data, photo)(), 3, 100 + seed)):
            im.save(root / label / f"{label}_test_{i}.jpg", quality=90)
    return root

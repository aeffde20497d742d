"""Shared test fixtures (plain helpers are in tests/helpers.py). Tests never touch the
network: any non-loopback connection fails."""
import ipaddress
import socket

import pytest
from helpers import PHOTO_CLASSES, WEB_PHOTOS, WorkerProcess, photo_variants

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
def app(tmp_path):
    """An app on a fresh instance folder (SQLite, local storage); a test file needing other
    settings defines its own `app`."""
    from web import create_app

    return create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "TESTING": True})


@pytest.fixture
def client(app):
    """Logged in as the page's user: session cookie plus the CSRF header (helpers.logged_in)."""
    from helpers import logged_in

    return logged_in(app.test_client())


@pytest.fixture
def empty_keras_home(tmp_path, monkeypatch):
    """A KERAS_HOME with no cached weights, and no configured weights folder."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("TRANSFERLAB_WEIGHTS_DIR", raising=False)
    return home


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """A folder of class folders: cat, coffee, rocket; 6 JPEGs each, from scikit-image photos."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    for seed, (label, photo) in enumerate(PHOTO_CLASSES.items()):
        (root / label).mkdir()
        for i, im in enumerate(photo_variants(getattr(data, photo)(), 6, seed)):
            im.save(root / label / f"{label}_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def photo_test_folder(tmp_path_factory):
    """A separate test set in the same classes, 3 images each, different crops."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos_test")
    for seed, (label, photo) in enumerate(PHOTO_CLASSES.items()):
        (root / label).mkdir()
        for i, im in enumerate(photo_variants(getattr(data, photo)(), 3, 100 + seed)):
            im.save(root / label / f"{label}_test_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def start_worker():
    """Factory: `start_worker(instance_path, **env) -> WorkerProcess` (started, not yet
    necessarily ready: call `.wait_ready()`); every worker is stopped at the session's end.
    The app under test must use the same instance folder (`create_app({"INSTANCE_PATH":
    ...})`), hence the same SQLite database and SQLite queue."""
    workers = []

    def start(instance_path, **env):
        worker = WorkerProcess(instance_path, **env).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="session")
def web_photos():
    """JPEG bytes of distinct variants of real photos: {class: [12 JPEGs]} for 4 classes
    (cat, coffee, rocket, astronaut); tests slice them into training, test and extra sets."""
    import io

    from skimage import data

    out = {}
    for seed, (label, photo) in enumerate(WEB_PHOTOS.items()):
        images = []
        for im in photo_variants(getattr(data, photo)(), 12, 500 + seed):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=88)
            images.append(buf.getvalue())
        out[label] = images
    return out

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

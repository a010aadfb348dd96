"""Shared fixtures: a real temporary MLflow SQLite store, a real `mlflow server`, one data cache per session (no
mocks). Helpers the tests import live in helpers.py."""

from __future__ import annotations

import shutil
import socket
import sys

import pytest

from helpers import Server


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory):
    """Generated datasets are cached once per test session, outside the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRAINWISE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory):
    """A real, empty MLflow SQLite store, created once per session: creating one runs MLflow's schema migrations
    (~2 s), and a copy of the file is the same empty store (~0.05 s)."""
    from helpers import mlflow_client

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow_client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(tmp_path, _empty_store) -> str:
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (free port, SQLite backend, served artifacts in tmp_path)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts",
               "--workers", "1"]  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", None, command)
    server.start()
    yield server
    server.stop()

"""The stores of the remote tests, started once for the session on 127.0.0.1 (tests/servers.py)."""

from __future__ import annotations

import uuid

import pytest

from tests.servers import HttpServer, MotoServer, Relay, s3_env

pytest.importorskip("s3fs", reason="the [remote] extra (s3fs) is not installed")
pytest.importorskip("moto", reason="the test extra (moto) is not installed")


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    yield server
    server.stop()


def _point_at(server, patch) -> str:
    """Point this process at the test S3 server with short retries (``patch``: a MonkeyPatch); a fresh bucket's URL."""
    for key, value in s3_env(server.endpoint).items():
        if key.startswith(("AWS_", "SIMPSONS_")):
            patch.setenv(key, value)
    import pipeline.storage.store as store

    patch.setattr(store, "RETRIES", 2)
    patch.setattr(store, "BACKOFF_S", 0.2)
    import fsspec

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}"


@pytest.fixture()
def s3(moto_server, monkeypatch):
    """This process pointed at the test S3 server, with short retries; yields a fresh bucket's URL."""
    return _point_at(moto_server, monkeypatch)


@pytest.fixture(scope="module")
def s3_module(moto_server):
    """As :func:`s3`, for the fixtures a module's tests share (a set published once)."""
    with pytest.MonkeyPatch.context() as patch:
        yield _point_at(moto_server, patch)


@pytest.fixture()
def relay(moto_server, s3, monkeypatch):
    """The S3 server behind a relay that a test can cut; the environment points at the relay."""
    r = Relay(moto_server.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", r.endpoint)
    yield r
    r.stop()


@pytest.fixture()
def http_root(tmp_path):
    """(a folder, the URL of a read-only HTTP server of it)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = HttpServer(folder)
    yield folder, server.url
    server.stop()

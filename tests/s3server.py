"""A real S3-compatible server on loopback for the s3:// tests: moto's ThreadedMotoServer (what s3fs's own
tests use), started on a free port and stopped afterwards; s3fs finds it through AWS_ENDPOINT_URL."""

from __future__ import annotations

import contextlib
import uuid

import pytest


@contextlib.contextmanager
def s3_server(monkeypatch: pytest.MonkeyPatch):
    """Yields (s3fs filesystem, bucket name) on a fresh local server with a new empty bucket (moto keeps its
    buckets per process, so every use gets its own name)."""
    pytest.importorskip("moto.server", reason="the s3:// test needs moto[server]")
    s3fs = pytest.importorskip("s3fs", reason="the s3:// test needs s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "team-key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"secret-{uuid.uuid4().hex}")  # distinctive: grep-able in leaks
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3fs.S3FileSystem.clear_instance_cache()  # instances cache their endpoint
        fs = s3fs.S3FileSystem()
        bucket = f"team-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        yield fs, bucket
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()

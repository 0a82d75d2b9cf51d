"""Shared fixtures: a real S3 endpoint on loopback (moto server) and generic helpers.

The S3 server is the moto HTTP server, which s3fs/boto3 talk to exactly as to a cloud bucket; it needs no
network beyond 127.0.0.1. Credentials are dummy values, set only while the server fixture is alive.
"""

from __future__ import annotations

import collections
import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1 (random free port), with dummy AWS credentials in the env."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in (*_AWS_TEST_ENV, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    os.environ.update(_AWS_TEST_ENV)
    # an endpoint from the developer's shell must not redirect the tests (or vice versa)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


class CountingPool:
    """An executor that runs each task on `pool` and counts it, by function name, in `tasks`: tests that claim
    to cover work done in a process pool assert that the pool got it."""

    def __init__(self, pool, tasks: collections.Counter | None = None):
        self.pool, self.tasks = pool, collections.Counter() if tasks is None else tasks

    def submit(self, fn, /, *args, **kwargs):
        self.tasks[fn.__name__] += 1
        return self.pool.submit(fn, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pool, name)


@pytest.fixture(scope="session")
def counting_pool():
    """CountingPool(pool, tasks=None): wraps an executor and counts the tasks submitted to it."""
    return CountingPool

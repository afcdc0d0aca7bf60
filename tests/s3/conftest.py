"""Fixtures for S3 tests: a real `tidestore serve` process and real boto3 clients."""

import itertools
import os

import pytest

from tidestore.testing import start, stop

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server process per test module (starting one costs ~0.5 s)."""
    srv = start(str(tmp_path_factory.mktemp("tidestore") / "data"))
    yield srv
    stop(srv)


@pytest.fixture(scope="module")
def s3(server):
    return server.boto3_client()


@pytest.fixture
def bucket(s3):
    """A new, empty bucket for each test."""
    name = f"test-{os.getpid()}-{next(_names)}"
    s3.create_bucket(Bucket=name)
    return name

"""Shared fixtures: engines on temporary directories of the repository's own disk."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "node")

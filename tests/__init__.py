"""The tests mirror the packages: tests/search/<room>/, tests/spaces, tests/cluster, tests/reports; tests/benchmarks
smoke-tests the benchmark scripts (the only tests that import ``benchmarks``)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root."""


def under_xdist() -> bool:
    """Whether this session runs on several pytest-xdist workers (CI's slow lane, ``-n 2``)."""
    return os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1"

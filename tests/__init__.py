"""The tests mirror the packages: tests/search/<room>/, tests/spaces, tests/cluster, tests/reports; tests/benchmarks
smoke-tests the benchmark scripts (the only tests that import ``benchmarks``)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root."""

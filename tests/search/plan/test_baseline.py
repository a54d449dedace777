"""The runtime baseline's cache key (``search.plan.baseline``), which the threads and heap measurements share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_the_measurements_cache_key_is_the_environment_not_the_name_it_was_started_by():
    """``peft-search`` runs ``.venv/bin/python3``, ``python -m peft_search`` ``.venv/bin/python``: one environment,
    whose measurements (runtime baseline, threads, heap) one run caches for the other."""
    names = [Path(sys.executable).with_name(n) for n in ("python", "python3")]
    if not all(n.exists() for n in names):
        pytest.skip("this environment has no python and python3 side by side")
    code = "from peft_search.search.plan.baseline import RuntimeBaseline; print(RuntimeBaseline.environment_key())"
    keys = {
        subprocess.run([str(n), "-c", code], capture_output=True, text=True, check=True).stdout for n in names
    }
    assert len(keys) == 1 and sys.prefix in keys.pop()

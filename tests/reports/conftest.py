"""Results directories written the way the search writes them: typed records through ``ResultsDir``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.records import TrialResult


@pytest.fixture
def write_search(tmp_path) -> Callable[..., Path]:
    """``write_search(records, [(metric, mode), ...])``: a results directory with a trials table and run.json."""

    def write(records: Sequence[TrialResult], objectives: Sequence[tuple[str, str]], name: str = "s") -> Path:
        path = tmp_path / name
        path.mkdir()
        results = ResultsDir(path)
        results.write_trials(records)
        results.write_facts(
            {
                "name": name,
                "model": "tiny",
                "wall_time_s": 60.0,  # a finished search
                "objectives": [{"metric": m, "mode": mode} for m, mode in objectives],
            }
        )
        return path

    return write

"""Damaged results files: every command answers in one line (no traceback), `repair` rebuilds the trials table and
predictions from the trials' own records exactly as the search wrote them, and a damaged study or Tune state is
named before Ray starts."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from peft_search.search.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def copy(small_search, tmp_path):
    """A copy of a real finished search (5 trials: complete, failed and infeasible ones)."""
    _, search_dir = small_search
    target = tmp_path / search_dir.name
    shutil.copytree(search_dir, target)
    return target


def _truncate(path, keep=300):
    path.write_bytes(path.read_bytes()[:keep])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    (line,) = err.splitlines()
    return line


def test_a_truncated_table_gets_one_line_everywhere_and_repair_rebuilds_it_exactly(copy, capsys):
    before = pd.read_parquet(copy / "trials.parquet").sort_values("trial_id").reset_index(drop=True)
    predictions = (
        pd.read_parquet(copy / "predictions.parquet").sort_values(["trial_id", "row"]).reset_index(drop=True)
    )
    assert {"complete", "failed", "infeasible"} <= set(before["status"])
    _truncate(copy / "trials.parquet")
    for command in (["show"], ["best"], ["report"], ["best", "--format", "json"]):
        assert main([*command, str(copy)]) == 2
        line = _one_line(capsys)
        assert "trials.parquet: damaged or unreadable" in line and f"peft-search repair {copy}" in line
    assert main(["repair", str(copy)]) == 0
    assert "rebuilt trials.parquet from the trials' own records: 5 trials" in capsys.readouterr().out
    after = pd.read_parquet(copy / "trials.parquet").sort_values("trial_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(after[before.columns], before)
    again = (
        pd.read_parquet(copy / "predictions.parquet").sort_values(["trial_id", "row"]).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(again, predictions)
    assert main(["show", str(copy)]) == 0 and main(["repair", str(copy)]) == 0
    assert "nothing to repair" in capsys.readouterr().out

    # Damaged predictions alone: the same.
    _truncate(copy / "predictions.parquet")
    assert main(["best", str(copy)]) == 2 and "predictions.parquet: damaged" in _one_line(capsys)
    assert main(["repair", str(copy)]) == 0 and main(["best", str(copy)]) == 0


def test_a_damaged_study_is_named_before_ray_starts(copy, capsys):
    study = copy / "optuna.db"
    _truncate(study, 5000)
    assert main(["show", str(copy)]) == 0 and main(["best", str(copy)]) == 0  # the table is intact
    capsys.readouterr()
    assert main(["resume", str(copy)]) == 2
    line = _one_line(capsys)
    assert "optuna.db: the Optuna study is damaged" in line and "start a new search" in line


def test_a_damaged_tune_state_is_set_aside_and_the_resume_runs_on_from_the_records(copy, capsys):
    before = pd.read_parquet(copy / "trials.parquet")
    (state,) = (copy / "tune").glob("experiment_state-*.json")
    _truncate(state)
    assert main(["resume", str(copy)]) == 0
    out = capsys.readouterr().out
    # Every finished trial is kept from the table and the study; nothing runs again; the damaged file is kept aside.
    assert f"restored {len(before)} finished trial(s)" in out and "nothing left to run" in out
    assert f"set aside: {state.name}" in out
    assert (state.parent / f"{state.name}.damaged").is_file() and not state.exists()
    after = pd.read_parquet(copy / "trials.parquet")
    pd.testing.assert_frame_equal(
        after.sort_values("trial_id").reset_index(drop=True),
        before.sort_values("trial_id").reset_index(drop=True),
    )

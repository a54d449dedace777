"""Damaged results files: every command answers in one line (no traceback), `repair` rebuilds the trials table and
predictions from the trials' own records exactly as the search wrote them, and a damaged study or Tune state is
named before Ray starts."""

from __future__ import annotations

import json
import shutil

import optuna
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


def test_a_damaged_study_is_rebuilt_from_the_table_and_the_trials_configs(copy, capsys):
    study_file = copy / "optuna.db"
    before = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_file}")
    trials = before.trials  # read now: the file is cut below
    told = {_told(t) for t in trials if t.state.is_finished()}
    rows = pd.read_parquet(copy / "trials.parquet")
    # One sampled trial was cut off: its row running, its own results not written. The resume asks for one more.
    cut = rows[(rows["status"] == "complete") & (rows["candidate"] == "sampled")].iloc[0]
    rows.loc[rows["trial_id"] == cut["trial_id"], "status"] = "running"
    rows.to_parquet(copy / "trials.parquet", index=False)
    (copy / "tune" / f"trial-{cut['trial_id']}" / "result.json").write_text("")
    _truncate(study_file, 5000)
    assert main(["show", str(copy)]) == 0 and main(["best", str(copy)]) == 0  # the table does not need it
    capsys.readouterr()

    assert main(["resume", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "the Optuna study was damaged" in out and "rebuilt the damaged Optuna study" in out
    assert (copy / "optuna.db.damaged").is_file()
    assert "restored 4 finished trial(s)" in out and "1 new to ask for" in out
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_file}")
    # The finished trials come back as the searcher told them: state, values, parameters in their distributions.
    assert {_told(t) for t in study.trials[:4]} == told - {_told(trials[int(cut["optuna_trial"])])}
    after = pd.read_parquet(copy / "trials.parquet")
    assert len(after) == 5 and cut["trial_id"] not in set(after["trial_id"])
    assert sorted(after["optuna_trial"]) == list(range(5))  # the table points at the rebuilt study's trials
    assert [t.state.name for t in study.trials].count("RUNNING") == 0


def _told(trial) -> str:
    return json.dumps([trial.state.name, trial.values, trial.params], sort_keys=True)


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

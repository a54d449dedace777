"""A disk that fills up in the middle of a search: the trials table's write fails inside Tune's callback, and the
search ends with one line (what could not be written, the free space there), no temporary file, every finished
trial kept; a resume once there is space again completes the search."""

from __future__ import annotations

import errno
import os

import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from peft_search.search.cli import main

pytestmark = pytest.mark.slow


def test_a_disk_that_fills_up_mid_search(
    ray_local, tiny_bert, classification_csv, tmp_path, monkeypatch, capsys
):
    raw = {
        "name": "full-disk",
        "model": {"name_or_path": tiny_bert},
        "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
        "space": {"methods": ["lora"], "ranks": [2, 4]},
        "search": {"num_trials": 4, "seed": 0, "max_concurrent": 1},
        "training": {"max_steps": 1, "batch_size": 4, "max_seq_length": 24, "eval_batch_size": 8},
        "resources": {"cpus_per_worker": 1},
        "results_dir": str(tmp_path / "results"),
    }
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    search = tmp_path / "results" / "full-disk"
    real, writes = pq.write_table, []

    def fills_up(table, where, **kwargs):
        if str(where).endswith("trials.parquet.tmp"):
            writes.append(where)
            if len(writes) == 3:  # the table's third write: half of it lands, then the disk is full
                with open(where, "wb") as f:
                    f.write(b"PAR1" + b"\0" * 100)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", fills_up)
    assert main(["run", str(config)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"peft-search: error: cannot write {search / 'trials.parquet'} (No space left")
    assert "MiB free there" in line and "peft-search resume" in line
    assert not list(search.rglob("*.tmp"))
    kept = pd.read_parquet(search / "trials.parquet")
    assert (kept["status"] == "complete").sum() >= 1  # what finished before the disk filled is on disk

    monkeypatch.setattr(pq, "write_table", real)  # space freed
    assert main(["resume", str(search)]) == 0
    trials = pd.read_parquet(search / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "complete").all() and trials["trial_id"].is_unique
    for row in kept[kept["status"] == "complete"].itertuples():  # kept, not trained again
        assert trials.set_index("trial_id").loc[row.trial_id, "wall_time_s"] == row.wall_time_s
    study = optuna.load_study(study_name="full-disk", storage=f"sqlite:///{search / 'optuna.db'}")
    assert [t.state.name for t in study.trials].count("COMPLETE") == 4

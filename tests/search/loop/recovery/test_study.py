"""The study's health check before a resume (``recovery.study.study_is_damaged``), on real Optuna storage: a
study whose writer was SIGKILLed mid-write is whole (SQLite rolls its journal back), one cut in half is damaged."""

from __future__ import annotations

import subprocess
import sys

import optuna

from peft_search.search.loop.recovery.study import study_is_damaged
from peft_search.search.results.layout import OPTUNA_FILE, ResultsDir

# A writer killed mid-transaction: a 1-page cache makes SQLite spill changed pages into the database file before the
# commit, so the file is half-written and the journal beside it is hot (what a SIGKILLed driver leaves).
KILLED_WRITER = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=1")
db.execute("BEGIN")
db.execute("CREATE TABLE filler (x BLOB)")
for _ in range(200):
    db.execute("INSERT INTO filler VALUES (randomblob(2000))")
db.execute("UPDATE trials SET state = 'FAIL'")
os.kill(os.getpid(), signal.SIGKILL)
"""


def _study(tmp_path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / OPTUNA_FILE}", study_name="s", directions=["maximize"]
    )
    for x in (0.1, 0.5):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, value=x
            )
        )
    return study


def test_a_study_whose_writer_was_killed_mid_write_is_rolled_back_not_rebuilt(tmp_path):
    _study(tmp_path)
    path = tmp_path / OPTUNA_FILE
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    journal = path.with_name(path.name + "-journal")
    assert journal.exists() and journal.stat().st_size > 0  # hot: the case a read-only check took for damage

    assert study_is_damaged(ResultsDir(tmp_path)) is None
    assert not journal.exists()  # rolled back by SQLite
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{path}").trials
    assert [(t.state, t.value) for t in trials] == [(optuna.trial.TrialState.COMPLETE, x) for x in (0.1, 0.5)]


def test_a_study_cut_in_half_is_damaged(tmp_path):
    _study(tmp_path)
    path = tmp_path / OPTUNA_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert study_is_damaged(ResultsDir(tmp_path)) is not None

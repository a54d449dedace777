"""A search whose driver is killed (SIGKILL: driver, Ray and every worker at once, as in a reboot) resumes with
nothing lost or run twice, and ends with the results of an uninterrupted search of the same size."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
import yaml

from peft_search.search.cli import main
from peft_search.search.loop.recovery.attributes import STALE as STALE_ATTR
from tests import ROOT
from tests.conftest import CANDIDATES

# One worker runs the module (CI: --dist loadgroup), so its search fixture runs once, not on each worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume")]

NUM_TRIALS = 4


@pytest.fixture(scope="module")
def config_file(tiny_bert, classification_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    raw = {
        "name": "full",
        "model": {"name_or_path": tiny_bert},
        "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
        "space": {
            "methods": ["lora", "ia3"],
            "ranks": [2, 4],
            "candidates": [c for c in CANDIDATES if c["name"] == "lora-qv"],
        },
        "search": {"num_trials": NUM_TRIALS, "seed": 0, "max_concurrent": 1},
        "training": {"max_steps": 3, "batch_size": 4, "max_seq_length": 24, "eval_batch_size": 8},
        "resources": {"cpus_per_worker": 1},
        "results_dir": str(root / "results"),
    }
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "peft_search", *args, "--num-cpus", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (Ray's GCS, raylet, workers): nothing gets to clean up."""
    family = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=30)
    assert not alive


def _complete(search_dir: Path) -> pd.DataFrame:
    path = search_dir / "trials.parquet"
    if not path.exists():
        return pd.DataFrame()
    try:
        trials = pd.read_parquet(path)
    except Exception:  # caught between writes
        return pd.DataFrame()
    return trials[trials["status"] == "complete"]


def _resume(search_dir: Path) -> None:
    """``peft-search resume`` in this process, on the session's Ray instance (the kill was a process of its own)."""
    assert main(["resume", str(search_dir)]) == 0


@pytest.fixture(scope="module")
def searches(ray_local, config_file):
    results = Path(yaml.safe_load(config_file.read_text())["results_dir"])
    assert main(["run", str(config_file)]) == 0  # the uninterrupted search, here

    killed = _cli("run", str(config_file), "--name", "killed")
    killed_dir = results / "killed"
    deadline = time.time() + 600
    while len(_complete(killed_dir)) < 2:
        assert killed.poll() is None, killed.stderr.read()
        assert time.time() < deadline, "the search did not finish two trials in time"
        time.sleep(0.5)
    _kill_tree(killed)
    before = _complete(killed_dir)
    assert len(before) < NUM_TRIALS  # really interrupted

    _resume(killed_dir)
    return results / "full", killed_dir, before


def test_finished_trials_are_kept_and_not_run_again(searches):
    _, killed_dir, before = searches
    after = pd.read_parquet(killed_dir / "trials.parquet").set_index("trial_id")
    assert len(after) == NUM_TRIALS and (after["status"] == "complete").all()
    for _, row in before.iterrows():
        kept = after.loc[row["trial_id"]]
        # Same row, same numbers, same adapter: the trial was not trained again.
        assert kept["accuracy"] == row["accuracy"] and kept["train_time_s"] == row["train_time_s"]
        assert kept["adapter_path"] == row["adapter_path"]
    facts = json.loads((killed_dir / "run.json").read_text())
    assert len(facts["resumed"]) == 1


def test_optuna_study_has_no_duplicated_or_stale_trials(searches):
    _, killed_dir, _ = searches
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{killed_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") == NUM_TRIALS
    # A trial asked in the instant before the kill, after Tune's last saved state, is closed with its reason.
    assert all(STALE_ATTR in t.user_attrs for t in study.trials if t.state.name == "FAIL")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    keys = [
        json.dumps([t.params, t.user_attrs.get("peft_search.candidate")], sort_keys=True) for t in complete
    ]
    assert len(set(keys)) == NUM_TRIALS


def test_results_equal_an_uninterrupted_search(searches):
    full_dir, killed_dir, _ = searches

    def outcome(search_dir: Path) -> list[tuple]:
        trials = pd.read_parquet(search_dir / "trials.parquet")
        return sorted(
            (r.method, r.quantization, r.peft_config, round(r.learning_rate, 12), round(r.accuracy, 6))
            for r in trials.itertuples()
        )

    assert outcome(killed_dir) == outcome(full_dir)


def test_resume_refuses_another_search(config_file, searches, capsys, tmp_path):
    _, killed_dir, _ = searches
    raw = yaml.safe_load(config_file.read_text())
    raw["name"], raw["training"]["max_steps"] = "killed", 5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw))
    before = sorted(p.stat().st_mtime_ns for p in killed_dir.rglob("*") if p.is_file())
    assert main(["run", str(changed), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training.max_steps" in err and "--name" in err
    assert main(["run", str(changed), "--resume", "--name", "never-started"]) == 2
    assert "no search to resume" in capsys.readouterr().err
    assert sorted(p.stat().st_mtime_ns for p in killed_dir.rglob("*") if p.is_file()) == before


def test_resume_reconciles_records_that_disagree(searches, tmp_path, capsys):
    """The state a kill leaves when Tune's copy of its state lags the table and the study (it is copied in the
    background, file by file): one finished trial Tune still shows pending, one cut off before Tune saved it (its
    row running, its Optuna trial running, its adapter saved), and the search generator's counter ahead of Tune's
    trial list, as in a CI run that lost a trial, and its concurrency limiter still counting both as running."""
    import sqlite3

    import ray.cloudpickle as cloudpickle

    full_dir, _, _ = searches
    search = tmp_path / "full"
    shutil.copytree(full_dir, search)
    rows = pd.read_parquet(search / "trials.parquet").sort_values("optuna_trial").reset_index(drop=True)
    pending, cut_off = rows.iloc[2], rows.iloc[3]
    # Tune's state: the third trial pending, the fourth never saved.
    (state_file,) = (search / "tune").glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    kept = []
    for json_state, metadata in state["trial_data"]:
        trial = json.loads(json_state)
        if trial["trial_id"] == cut_off["trial_id"]:
            continue
        if trial["trial_id"] == pending["trial_id"]:
            trial["status"] = "PENDING"
        kept.append([json.dumps(trial), metadata])
    state_file.write_text(json.dumps({**state, "trial_data": kept}))
    # Tune's concurrency limiter still holding both as running (saved mid-search): a slot each, for good.
    (generator_file,) = (search / "tune").glob("search_gen_state-*.json")
    generator = cloudpickle.loads(generator_file.read_bytes())
    generator["name:ConcurrencyLimiter"].update(
        live_trials={pending["trial_id"], cut_off["trial_id"]}, num_unfinished_live_trials=2
    )
    generator_file.write_bytes(cloudpickle.dumps(generator))
    # The fourth trial: running in the table, in the study and in its own results (its last line not written).
    table = pd.read_parquet(search / "trials.parquet")
    table.loc[table["trial_id"] == cut_off["trial_id"], "status"] = "running"
    table.to_parquet(search / "trials.parquet", index=False)
    with contextlib.closing(sqlite3.connect(search / "optuna.db")) as db, db:
        db.execute("UPDATE trials SET state = 'RUNNING' WHERE number = ?", (int(cut_off["optuna_trial"]),))
    result = search / "tune" / f"trial-{cut_off['trial_id']}" / "result.json"
    result.write_text("")
    assert (search / cut_off["adapter_path"]).is_dir()  # recorded relative to the search: the copy's own

    capsys.readouterr()
    _resume(search)
    out, err = capsys.readouterr()
    assert "restored 3 finished trial(s), re-queued 1, marked 1 stale; 1 new to ask for" in out, out

    after = pd.read_parquet(search / "trials.parquet").set_index("trial_id")
    assert len(after) == NUM_TRIALS and (after["status"] == "complete").all(), out + err
    assert cut_off["trial_id"] not in after.index
    for _, row in rows.iloc[:3].iterrows():  # kept, the pending one included: not trained again
        assert after.loc[row["trial_id"], "wall_time_s"] == row["wall_time_s"]
    (new,) = [r for r in after.itertuples() if r.Index not in set(rows["trial_id"])]
    assert (new.peft_config, new.learning_rate) == (cut_off["peft_config"], cut_off["learning_rate"])
    assert not (search / "train" / f"train-{cut_off['trial_id']}").exists()
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{search / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == NUM_TRIALS and states.count("FAIL") == 1 and "RUNNING" not in states
    (stale,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert stale.number == cut_off["optuna_trial"] and STALE_ATTR in stale.user_attrs


def test_a_trial_only_the_study_saw_end_is_kept_not_run_again(searches, tmp_path, capsys):
    """Tune tells the searcher (and so the study) that a trial ended before the callbacks hear of it: a kill
    between the two leaves the study's outcome alone (the table shows the trial running; Tune never saved it; its
    own results lack their last line). The resume keeps that outcome rather than asking for a trial more, which
    would leave the study one complete trial too many (as a CI run of the chaos test saw)."""
    full_dir, _, _ = searches
    search = tmp_path / "full"
    shutil.copytree(full_dir, search)
    rows = pd.read_parquet(search / "trials.parquet").sort_values("optuna_trial").reset_index(drop=True)
    last = rows.iloc[-1]
    (state_file,) = (search / "tune").glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    state["trial_data"] = [
        [s, m] for s, m in state["trial_data"] if json.loads(s)["trial_id"] != last["trial_id"]
    ]
    state_file.write_text(json.dumps(state))
    table = pd.read_parquet(search / "trials.parquet")
    table.loc[table["trial_id"] == last["trial_id"], "status"] = "running"
    table.to_parquet(search / "trials.parquet", index=False)
    (search / "tune" / f"trial-{last['trial_id']}" / "result.json").write_text("")

    capsys.readouterr()
    _resume(search)
    out, err = capsys.readouterr()
    assert (
        f"restored {NUM_TRIALS} finished trial(s), re-queued 0, marked 0 stale; nothing left to run" in out
    ), out

    after = pd.read_parquet(search / "trials.parquet").set_index("trial_id")
    assert len(after) == NUM_TRIALS and (after["status"] == "complete").all(), out + err
    kept = after.loc[last["trial_id"]]
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{search / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * NUM_TRIALS
    told = study.trials[int(last["optuna_trial"])]
    assert kept["accuracy"] == told.values[0] and kept["peft_config"] == last["peft_config"]
    assert kept["adapter_path"].startswith("train/") and (search / kept["adapter_path"]).is_dir()

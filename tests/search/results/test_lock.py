"""One writer per search directory: a second run of the same search fails at once, naming the first; a lock left
by a run that died is taken over and said so; read-only commands work alongside and say the search is running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.results.lock import SearchLock, progress_note, read_holder, running_holder
from tests import ROOT


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    first = SearchLock(tmp_path / "s")
    assert first.acquire("peft-search run a.yaml") is None
    assert running_holder(tmp_path / "s")["pid"] == os.getpid()
    with pytest.raises(
        ConfigError, match=rf"is being written by pid {os.getpid()} on .*`peft-search run a.yaml`"
    ):
        SearchLock(tmp_path / "s").acquire("peft-search run a.yaml")
    first.release()
    assert read_holder(tmp_path / "s") is None and running_holder(tmp_path / "s") is None
    second = SearchLock(tmp_path / "s")
    assert second.acquire("again") is None
    second.release()
    assert list(tmp_path.iterdir()) == []  # nothing was written: no lock file left either


def test_a_lock_left_by_a_dead_run_is_taken_over_and_said(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    note = {
        "host": os.uname().nodename,
        "pid": int(dead.stdout),
        "started": 0,
        "command": "peft-search run x",
    }
    (tmp_path / ".s.lock.json").write_text(json.dumps(note))
    assert running_holder(tmp_path / "s") is None  # its process is gone
    lock = SearchLock(tmp_path / "s")
    said = lock.acquire("peft-search resume")
    assert said.startswith("took over the lock of") and f"pid {note['pid']}" in said
    assert read_holder(tmp_path / "s")["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_two_runs_of_one_search_the_second_fails_at_once(tiny_bert, classification_csv, tmp_path):
    raw = {
        "name": "twice",
        "model": {"name_or_path": tiny_bert},
        "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
        "space": {"methods": ["ia3", "bitfit"]},
        "search": {"num_trials": 2, "max_concurrent": 1},
        "training": {"max_steps": 2, "batch_size": 4, "max_seq_length": 24, "eval_batch_size": 8},
        "resources": {"cpus_per_worker": 1},
        "results_dir": str(tmp_path / "results"),
    }
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "peft_search", "run", str(config), "--num-cpus", "2"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    search_dir = tmp_path / "results" / "twice"
    deadline = time.monotonic() + 120
    while read_holder(search_dir) is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert read_holder(search_dir)["pid"] == first.pid
    t0 = time.monotonic()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and time.monotonic() - t0 < 10
    (line,) = second.stderr.strip().splitlines()
    assert f"is being written by pid {first.pid}" in line and "--name NEW" in line
    # A reader meanwhile: it works and says the search is running, and by whom.
    assert progress_note(search_dir, finished=False).startswith(f"still running: pid {first.pid} on ")
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    trials = pd.read_parquet(search_dir / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"complete"}
    assert read_holder(search_dir) is None  # released at the end
    assert progress_note(search_dir, finished=False).startswith("unfinished, and no run is writing it")
    shown = subprocess.run([*command[:3], "show", str(search_dir)], env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "the search is" not in shown.stdout  # finished: nothing to say


def _holding(search_dir):
    """Another live process holding the search's lock, as a running search does (its note written)."""
    code = (
        "import sys, time\n"
        "from peft_search.search.results.lock import SearchLock\n"
        "lock = SearchLock(sys.argv[1])\n"
        "lock.acquire('peft-search run a.yaml')\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(search_dir)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def _snapshot(root) -> dict:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_repair_is_refused_while_another_process_writes_the_search(tmp_path, capsys):
    """``repair`` rewrites the directory: it takes the lock a run holds, and is refused, in one line naming the
    search and its writer, while one holds it; nothing changes. Once that writer is gone it repairs."""
    from peft_search.search.cli import main

    search = tmp_path / "results" / "s"
    trial = search / "tune" / "trial-abc"
    trial.mkdir(parents=True)
    (search / "config.yaml").write_text("name: s\n")
    (search / "trials.parquet").write_bytes(b"PAR1 cut short by a full disk")
    (trial / "params.json").write_text(json.dumps({"method": "lora", "quantization": "none"}))
    last = {
        "trial_status": "complete",
        "accuracy": 0.5,
        "checkpoint_path": "/old/s/train/train-abc/checkpoint_000000",
    }
    (trial / "result.json").write_text(json.dumps(last) + "\n")
    holder = _holding(search)
    try:
        before = _snapshot(tmp_path)
        assert main(["repair", str(search)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert (
            f"{search} is being written by pid {holder.pid} on " in line
            and "`peft-search run a.yaml`" in line
        )
        assert f"then `peft-search repair {search}`" in line
        assert _snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["repair", str(search)]) == 0
    out = capsys.readouterr().out
    assert f"took over the lock of {search} from pid {holder.pid}" in out and "rebuilt trials.parquet" in out
    (row,) = pd.read_parquet(search / "trials.parquet").to_dict("records")
    assert row["status"] == "complete" and row["adapter_path"] == "train/train-abc/checkpoint_000000"
    assert read_holder(search) is None  # released

"""Ctrl-C mid-search: Ray Tune ends its run and saves its state, and ``fit`` returns as if the search were done;
the command says it was interrupted (exit 130, one line naming ``resume``), and ``resume`` finishes the search."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from benchmarks.chaos_search import make_search
from peft_search.search.cli import main
from tests import ROOT

pytestmark = pytest.mark.slow


def test_ctrl_c_is_an_interrupt_and_resume_finishes_the_search(
    ray_local, tiny_bert, classification_csv, tmp_path
):
    # The chaos benchmark's tiny search (1-step trials), run by the command in a process of its own.
    config = make_search(tmp_path, 6, name="cut", model=tiny_bert, data=classification_csv)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "peft_search"]
    run = subprocess.Popen(
        [*command, "run", str(config), "--num-cpus", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    for line in run.stdout:  # the first trial's start: the search is under way
        if " started: " in line or time.monotonic() > deadline:
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, (out[-2000:], err[-2000:])
    assert err.strip().splitlines()[-1] == (
        "peft-search: error: interrupted; finished trials are kept (`peft-search resume DIR` finishes a search)"
    )
    assert " trials complete. Results: " not in out  # no summary of a search that did not finish
    search_dir = tmp_path / "results" / "cut"
    assert main(["resume", str(search_dir)]) == 0  # here, on the session's Ray instance
    trials = pd.read_parquet(search_dir / "trials.parquet")
    assert len(trials) == 6 and set(trials["status"]) == {"complete"}

"""Chaos, in CI: a tiny search's driver SIGKILLed at random moments (during its trials, half-way through a copy of
Tune's saved state, during the resume itself, early and late), 20 kills under CPU load; after each search is
resumed to its end, its trials table, Optuna study and adapters hold exactly its trials, each once, and no trial
that had finished before a kill is lost or trained again. ``python -m benchmarks.chaos`` runs the same scenarios
and writes the Reliability table."""

from __future__ import annotations

import random

import pytest

from benchmarks.chaos import hogs, reference, scenarios
from tests import under_xdist

# 20 driver kills and resumes take 15-25 min on 2 cores: run last, so a CI out of time still shows the rest.
# Under pytest-xdist (CI: -n 2) it runs on a worker of its own from the start, and the other worker's tests load
# the machine in place of the busy loop.
pytestmark = [pytest.mark.slow, pytest.mark.last, pytest.mark.long, pytest.mark.timeout(2700)]

KILLS = 20
TRIALS = 6


def test_twenty_random_kills_lose_nothing_and_run_nothing_twice(tmp_path):
    busy = hogs(0 if under_xdist() else 1)
    try:
        ref = reference(tmp_path, TRIALS)
        assert ref["rc"] == 0 and ref["problems"] == []
        # Three kills a scenario (the run, then two resumes in a row): 4 processes for 3 kills, where one killed
        # resume a scenario took 3 for 2.
        runs = scenarios(
            tmp_path,
            KILLS,
            random.Random(20),
            num_trials=TRIALS,
            span_s=ref["span_s"],
            resume_kill_p=1.0,
            resume_kills=2,
        )
    finally:
        for hog in busy:
            hog.kill()
            hog.wait()
    kills = [k for s in runs for k in s["kills"]]
    assert len(kills) >= KILLS
    assert {"time", "sync", "resume-early", "resume"} <= {k["kind"] for k in kills}
    problems = [
        f"scenario {s['scenario']} ({[k['moment'] for k in s['kills']]}): {p}"
        for s in runs
        for p in s["problems"]
    ]
    assert problems == []
    assert all(s["survived"] == len(s["kills"]) for s in runs)

"""A trial's status, derived in one place (``recovery.status``): the table's statuses, Optuna's states and Tune's
map onto each other both ways."""

from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.loop.recovery import attributes, status

RESULTS = {
    "complete": {"trial_status": "complete", "accuracy": 0.9},
    "infeasible": {"trial_status": "infeasible", "trial_error": "over budget"},
    "stopped_early": {
        "trial_status": "running",
        "rung_step": 4,
        "accuracy": 0.4,
        "eval_rows": 10,
        "done": True,
    },
}


@pytest.mark.parametrize("said", ["complete", "infeasible", "stopped_early"])
def test_a_finished_trial_reads_the_same_from_every_record(said):
    result = RESULTS[said]
    assert status.from_result(result)[0] == said
    assert status.from_tune("TERMINATED", result)[0] == said
    assert status.from_trial_files(result, None)[0] == said
    state, values = status.to_study(said, [result.get("accuracy")], worst=[-math.inf])
    attrs = attributes.outcome_attrs(said, step=result.get("rung_step"), error=result.get("trial_error", ""))
    assert status.from_study(state, attrs) == said
    assert state == {"complete": TrialState.COMPLETE, "infeasible": TrialState.COMPLETE}.get(
        said, TrialState.PRUNED
    )
    assert values == {"complete": [0.9], "infeasible": [-math.inf]}.get(said)


def test_failures_and_cut_off_trials():
    assert status.from_tune("ERROR", {}) == ("failed", "trial failed")
    assert status.from_tune("RUNNING", {}) is None and status.from_tune("PENDING", {}) is None
    assert status.from_trial_files(None, None) == ("running", "")
    # A rung's result the driver died after (Tune had not ended the trial there): cut off, not stopped.
    assert status.from_trial_files({**RESULTS["stopped_early"], "done": False}, None) == ("running", "")
    assert status.from_trial_files(None, RuntimeError("boom"))[0] == "failed"
    assert status.to_study("complete", [float("nan")], worst=[0.0]) == (TrialState.FAIL, None)
    assert status.to_study("failed", [0.9], worst=[0.0]) == (TrialState.FAIL, None)
    assert status.from_study(TrialState.FAIL, {}) == "failed"


def test_an_infeasible_config_is_found_anywhere_in_the_error_chain():
    try:
        try:
            raise InfeasibleTrialError("PEFT refused it: no target module")
        except InfeasibleTrialError as inner:
            raise RuntimeError("the worker failed") from inner
    except RuntimeError as err:
        said, message = status.from_error(err)
    assert said == "infeasible" and message == "PEFT refused it: no target module"
    assert status.from_error(ValueError("bad")) == ("failed", "ValueError: bad")

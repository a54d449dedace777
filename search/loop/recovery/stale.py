"""Stale trials: Optuna trials a dead driver left RUNNING, closed once a resumed search has finished."""

from __future__ import annotations

import optuna

from peft_search.search.loop.recovery.optuna_storage import open_study
from peft_search.search.loop.recovery.reconcile import mark_stale


def close_stale_trials(storage_url: str, study_name: str) -> int:
    """Close the Optuna trials a dead driver left RUNNING; returns how many.

    Such a trial was asked after Tune's last saved state, so Tune never knew it: the resumed searcher asks again
    (the sampler's restored state makes it the same config) and the old record stays behind. Optuna cannot delete
    a trial, so it is marked FAIL with the reason in its user attributes (``attributes.STALE``); called once the
    resumed search has finished, when nothing can still be running.
    """
    study, storage = open_study(storage_url, study_name)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in stale:
        mark_stale(study, storage, frozen.number, "asked again on resume")
    return len(stale)


__all__ = ["close_stale_trials"]

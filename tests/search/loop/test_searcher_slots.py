"""Each trial is proposed by a sampler seeded by its place in the search, so a search whose driver died and was
resumed proposes the configs an uninterrupted one would, and never one config twice (``PeftOptunaSearch``)."""

from __future__ import annotations

import functools

import optuna
import pytest

from peft_search.search.loop.recovery.attributes import STALE as STALE_ATTR
from peft_search.search.loop.recovery.optuna_storage import open_study
from peft_search.search.loop.recovery.reconcile import _reconcile_study
from peft_search.search.loop.searcher import PeftOptunaSearch
from peft_search.search.loop.tuning import make_sampler, sampler_for_slot

NUM_TRIALS = 4


def _space(trial: optuna.Trial) -> None:
    trial.suggest_categorical("method", ["lora", "ia3", "vera"])
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)


def _searcher(storage: str, candidate: dict | None = None) -> PeftOptunaSearch:
    storage_ = optuna.storages.RDBStorage(storage)
    if candidate is not None:
        study = optuna.create_study(study_name="s", storage=storage_, load_if_exists=True)
        if not study.trials:
            study.enqueue_trial(candidate)
    return PeftOptunaSearch(
        space=_space,
        metric="accuracy",
        mode="max",
        sampler=make_sampler("tpe", 0, NUM_TRIALS, None),
        study_name="s",
        storage=storage_,
        sampler_for_slot=functools.partial(sampler_for_slot, "tpe", 0, NUM_TRIALS, None),
    )


def _run(searcher: PeftOptunaSearch, ids: list[str]) -> list[tuple]:
    proposed = []
    for trial_id in ids:
        config = searcher.suggest(trial_id)
        proposed.append((config["method"], config["learning_rate"]))
        searcher.on_trial_complete(trial_id, {"accuracy": 0.5})
    return proposed


@pytest.mark.parametrize("candidate", [None, {"method": "lora", "learning_rate": 1e-3}])
def test_a_resume_after_a_trial_was_asked_but_never_saved_proposes_what_an_uninterrupted_search_would(
    tmp_path, candidate
):
    full = _run(_searcher(f"sqlite:///{tmp_path / 'full.db'}", candidate), ["a", "b", "c", "d"])
    assert len(set(full)) == NUM_TRIALS

    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    before = _run(_searcher(killed, candidate), ["a", "b"])
    # The driver asked a third trial and died before it had a single parameter or a place in Tune's saved state.
    study, storage = open_study(killed, "s")
    study.ask()
    # The resume marks it stale (reconcile), then a new driver's searcher asks on.
    stale, requeued = _reconcile_study(study, storage, {}, set(), set(), {}, {}, None, ["accuracy"], slots=2)
    assert (stale, requeued) == (1, 0)
    after = _run(_searcher(killed, candidate), ["c", "d"])

    assert before + after == full
    study = optuna.load_study(study_name="s", storage=killed)
    assert [STALE_ATTR in t.user_attrs for t in study.trials] == [False, False, True, False, False]


@pytest.mark.parametrize("candidate", [None, {"method": "lora", "learning_rate": 1e-3}])
def test_a_driver_killed_while_its_sampler_drew_a_config_resumes_to_the_same_configs(tmp_path, candidate):
    """Killed between two of a config's draws (the method drawn, the learning rate not), the trial is marked stale
    and asked afresh: its slot's sampler draws the whole config an uninterrupted search drew (queued with the
    method alone, the learning rate would come from another point of the sampler's sequence)."""
    full = _run(_searcher(f"sqlite:///{tmp_path / 'full.db'}", candidate), ["a", "b", "c", "d"])

    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    searcher = _searcher(killed, candidate)
    before = _run(searcher, ["a", "b"])
    study, storage = open_study(killed, "s")
    partial = study.ask()  # as the searcher asks (its slot's sampler), stopped after the first draw
    partial.suggest_categorical("method", ["lora", "ia3", "vera"])
    stale, requeued = _reconcile_study(study, storage, {}, set(), set(), {}, {}, None, ["accuracy"], slots=2)
    assert (stale, requeued) == (1, 0)
    assert before + _run(_searcher(killed, candidate), ["c", "d"]) == full


def test_a_candidate_killed_mid_ask_is_queued_again_whole(tmp_path):
    """A candidate's config was queued whole: killed in the middle of its ask, it is queued again with all of it."""
    candidate = {"method": "lora", "learning_rate": 1e-3}
    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    _searcher(killed, candidate)
    study, storage = open_study(killed, "s")
    asked = study.ask()  # the queued candidate, one draw made
    asked.suggest_categorical("method", ["lora", "ia3", "vera"])
    assert _reconcile_study(study, storage, {}, set(), set(), {}, {}, None, ["accuracy"], slots=4) == (1, 1)
    assert _run(_searcher(killed), ["a"]) == [("lora", 1e-3)]

"""Ray's ``OptunaSearch`` internals the search's searcher reads and sets (``recovery.private``), against the
installed Ray: each accessor finds what it names, and a missing one says which and where."""

from __future__ import annotations

import optuna
import pytest

from peft_search.search.loop.recovery import private
from peft_search.search.loop.searcher import PeftOptunaSearch


def test_each_accessor_reaches_what_it_names(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    searcher = PeftOptunaSearch(
        space=space,
        metric=["accuracy"],
        mode=["max"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=storage,
    )
    assert isinstance(private.searcher_study(searcher), optuna.Study)
    assert private.searcher_storage(searcher) is storage
    config = searcher.suggest("t1")
    assert 0 <= config["x"] <= 1 and config["optuna_trial"] == 0
    trials = private.searcher_trials(searcher)
    assert isinstance(trials["t1"], optuna.trial.Trial) and trials["t1"].number == 0
    searcher.on_trial_complete("t1", {"accuracy": 0.5, "trial_status": "complete"})
    assert "t1" in private.searcher_completed(searcher)
    assert private.searcher_study(searcher).trials[0].values == [0.5]
    sampler = optuna.samplers.RandomSampler(seed=1)
    private.set_searcher_sampler(searcher, sampler)
    assert (
        private.searcher_sampler(searcher) is sampler and private.searcher_study(searcher).sampler is sampler
    )


def test_a_renamed_attribute_is_named_with_its_home():
    with pytest.raises(
        private.PrivateApiChanged, match=r"OptunaSearch has no attribute _ot_study in ray .*private"
    ):
        private.searcher_study(object())

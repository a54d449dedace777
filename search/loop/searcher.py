"""Ray's ``OptunaSearch``, telling Optuna what a trial's status was and giving each trial its Optuna number.

- A trial ended at an early-stopping rung is PRUNED in the study (as Optuna's own pruners leave a trial), with the
  step and its part-way values as user attributes, so ``study.best_trials`` holds fully trained trials only.
- A config that cannot run completes with the worst value of every objective (``search.worker.infeasible``) and
  its status as a user attribute, so the study itself says which completed trials were never trained.
- Each trial's config carries the number of the Optuna trial that proposed it (``OPTUNA_TRIAL_KEY``), so the
  trials table links every row to its Optuna trial; the Optuna trial holds the resolved config (``attributes.CONFIG``:
  candidate, method, quantization, PEFT config, learning rate), so ``optuna.load_study`` alone shows what ran.
- Each trial is proposed by a sampler seeded by its place in the search (the number of the study's trials asked so
  far, less those a resume marked stale, ``attributes.STALE``): a sampler's saved random state lags the study after a kill, and
  would propose the configs it had proposed since again; seeded by place, a resumed search proposes what an
  uninterrupted one would.
- Each Optuna trial also holds the id of the Tune trial it became (``attributes.TUNE_TRIAL``). The study is written at
  once (a database) while Tune's saved state lags behind it, so a resumed search finds a trial's Optuna record
  by that id rather than by the searcher's saved map, and never tells Optuna twice about one trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from peft_search.search.loop.recovery import attributes, optuna_storage
from peft_search.search.loop.recovery.private import (
    searcher_completed,
    searcher_sampler,
    searcher_storage,
    searcher_study,
    searcher_trials,
    set_searcher_sampler,
    set_searcher_study,
)
from peft_search.search.results.records import ERROR_KEY, OPTUNA_TRIAL_KEY, RUNG_KEY, STATUS_KEY


class SearchStorage(optuna.storages.RDBStorage):
    """The search's study database (``optuna.db`` in its directory). Tune pickles it with the searcher
    (``tune/tuner.pkl``, ``tune/searcher-state-*.pkl``), and an ``RDBStorage`` unpickled opens its URL again: the
    place the search was when Tune saved, which a moved search no longer has and a copied one must not touch. So it
    pickles as a ``SavedStorage``, which opens nothing; a resume asks this run's storage (``PeftOptunaSearch.restore``,
    ``hand_restored_tuner``)."""

    def __reduce__(self):
        return (SavedStorage, ())

    def __deepcopy__(self, memo):
        return self  # one database: a copy in this process asks the same one (deepcopy would use __reduce__)


class SavedStorage:
    """The search's storage as Tune's saved state holds it: without its place, never asked (saying so if it is)."""

    def __getattr__(self, name: str):
        raise AttributeError(
            f"{name}: the search's Optuna storage as Tune saved it, kept without its place (the search may have "
            "moved since); a resumed search asks its own"
        )


class PeftOptunaSearch(OptunaSearch):
    def __init__(self, *args, sampler_for_slot: Callable[[int], Any] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sampler_for_slot = sampler_for_slot

    def suggest(self, trial_id: str) -> dict | None:
        study = searcher_study(self)
        if self._sampler_for_slot is not None and study is not None and trial_id not in searcher_trials(self):
            # Trials asked so far, less stale ones; a queued trial not asked yet (WAITING: a candidate, or a stale
            # trial re-queued by a resume) has no place until it is asked.
            slot = sum(
                attributes.STALE not in t.user_attrs and t.state != TrialState.WAITING
                for t in study.get_trials(deepcopy=False)
            )
            set_searcher_sampler(self, self._sampler_for_slot(slot))
        config = super().suggest(trial_id)
        trials = searcher_trials(self)
        if config is not None and trial_id in trials:
            ot_trial = trials[trial_id]
            config[OPTUNA_TRIAL_KEY] = ot_trial.number
            ot_trial.set_user_attr(attributes.CONFIG, attributes.config_attr(config))
            ot_trial.set_user_attr(attributes.TUNE_TRIAL, trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = searcher_trials(self).get(trial_id) or self._from_study(trial_id)
        completed = searcher_completed(self)
        if ot_trial is None or self._told(ot_trial):
            completed.add(trial_id)  # told before the driver died, or never asked here
            return
        if result and trial_id not in completed:
            if result.get(RUNG_KEY) is not None:
                metrics = self.metric if isinstance(self.metric, list) else [self.metric]
                rung = {m: float(result[m]) for m in metrics if result.get(m) is not None}
                attrs = attributes.outcome_attrs("stopped_early", step=int(result[RUNG_KEY]), rung=rung)
                result = None  # OptunaSearch tells a trial with no values and no error as PRUNED
            elif result.get(STATUS_KEY) == "infeasible":
                attrs = attributes.outcome_attrs("infeasible", error=str(result.get(ERROR_KEY, "")))
            else:
                attrs = {}
            for key, value in attrs.items():
                ot_trial.set_user_attr(key, value)
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        """The saved searcher (its sampler's state, its map of trials), asking this run's study: the saved one names
        the database where the search lived when it was saved, and the search may have moved since."""
        study, storage = searcher_study(self), searcher_storage(self)
        super().restore(checkpoint_path)
        if study is not None:
            study.sampler = searcher_sampler(
                self
            )  # the saved sampler: its random state goes on where it stopped
            trials = {
                k: optuna_storage.trial(study, storage, t.number) for k, t in searcher_trials(self).items()
            }
            set_searcher_study(self, study, storage, trials)

    def _from_study(self, trial_id: str):
        """The Optuna trial a Tune trial came from, found in the study by its id: the searcher's map was saved
        before that trial was asked (a resumed search)."""
        study = searcher_study(self)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.user_attrs.get(attributes.TUNE_TRIAL) == trial_id:
                trial = optuna_storage.trial(study, searcher_storage(self), frozen.number)
                searcher_trials(self)[trial_id] = trial
                return trial
        return None

    def _told(self, ot_trial: optuna.trial.Trial) -> bool:
        """Whether the study already holds this trial's outcome (told by a driver that then died)."""
        storage = searcher_storage(self)
        stored = optuna_storage.storage_trial_id(storage, searcher_study(self).study_name, ot_trial.number)
        return storage.get_trial(stored).state.is_finished()

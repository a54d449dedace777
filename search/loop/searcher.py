"""Ray's ``OptunaSearch``, telling Optuna what a trial's status was and giving each trial its Optuna number.

- A trial ended at an early-stopping rung is PRUNED in the study (as Optuna's own pruners leave a trial), with the
  step and its part-way values as user attributes, so ``study.best_trials`` holds fully trained trials only.
- A config that cannot run completes with the worst value of every objective (``search.worker.infeasible``) and
  its status as a user attribute, so the study itself says which completed trials were never trained.
- Each trial's config carries the number of the Optuna trial that proposed it (``OPTUNA_TRIAL_KEY``), so the
  trials table links every row to its Optuna trial; the Optuna trial holds the resolved config (``CONFIG_ATTR``:
  candidate, method, quantization, PEFT config, learning rate), so ``optuna.load_study`` alone shows what ran.
- Each trial is proposed by a sampler seeded by its place in the search (the number of the study's trials asked so
  far, less those a resume marked stale, ``STALE_ATTR``): a sampler's saved random state lags the study after a kill, and
  would propose the configs it had proposed since again; seeded by place, a resumed search proposes what an
  uninterrupted one would.
- Each Optuna trial also holds the id of the Tune trial it became (``TUNE_TRIAL_ATTR``). The study is written at
  once (a database) while Tune's saved state lags behind it, so a resumed search finds a trial's Optuna record
  by that id rather than by the searcher's saved map, and never tells Optuna twice about one trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from peft_search.search.loop.resume import STALE_ATTR
from peft_search.search.results.records import ERROR_KEY, OPTUNA_TRIAL_KEY, RUNG_KEY, STATUS_KEY

STATUS_ATTR = "peft_search.status"
CONFIG_ATTR = "peft_search.config"
TUNE_TRIAL_ATTR = "peft_search.tune_trial_id"
CONFIG_KEYS = ("candidate", "method", "quantization", "peft_config", "learning_rate", "training")


class PeftOptunaSearch(OptunaSearch):
    def __init__(self, *args, sampler_for_slot: Callable[[int], Any] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sampler_for_slot = sampler_for_slot

    def suggest(self, trial_id: str) -> dict | None:
        if (
            self._sampler_for_slot is not None
            and self._ot_study is not None
            and trial_id not in self._ot_trials
        ):
            # Trials asked so far, less stale ones; a queued trial not asked yet (WAITING: a candidate, or a stale
            # trial re-queued by a resume) has no place until it is asked.
            slot = sum(
                STALE_ATTR not in t.user_attrs and t.state != TrialState.WAITING
                for t in self._ot_study.get_trials(deepcopy=False)
            )
            self._sampler = self._ot_study.sampler = self._sampler_for_slot(slot)
        config = super().suggest(trial_id)
        if config is not None and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            config[OPTUNA_TRIAL_KEY] = ot_trial.number
            ot_trial.set_user_attr(CONFIG_ATTR, {k: config[k] for k in CONFIG_KEYS if k in config})
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id) or self._from_study(trial_id)
        if ot_trial is None or self._told(ot_trial):
            self._completed_trials.add(trial_id)  # told before the driver died, or never asked here
            return
        if result and trial_id not in self._completed_trials:
            if result.get(RUNG_KEY) is not None:
                ot_trial.set_user_attr(STATUS_ATTR, "stopped_early")
                ot_trial.set_user_attr("peft_search.stopped_at_step", int(result[RUNG_KEY]))
                for metric in self.metric if isinstance(self.metric, list) else [self.metric]:
                    if result.get(metric) is not None:
                        ot_trial.set_user_attr(f"peft_search.rung.{metric}", float(result[metric]))
                result = None  # OptunaSearch tells a trial with no values and no error as PRUNED
            elif result.get(STATUS_KEY) == "infeasible":
                ot_trial.set_user_attr(STATUS_ATTR, "infeasible")
                ot_trial.set_user_attr("peft_search.error", str(result.get(ERROR_KEY, ""))[:500])
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        """The saved searcher (its sampler's state, its map of trials), asking this run's study: the saved one names
        the database where the search lived when it was saved, and the search may have moved since."""
        import optuna

        study, storage = self._ot_study, self._storage
        super().restore(checkpoint_path)
        if study is not None:
            study.sampler = self._sampler  # the saved sampler: its random state goes on where it stopped
            self._ot_study, self._storage = study, storage
            self._ot_trials = {k: optuna.trial.Trial(study, t._trial_id) for k, t in self._ot_trials.items()}

    def _from_study(self, trial_id: str):
        """The Optuna trial a Tune trial came from, found in the study by its id: the searcher's map was saved
        before that trial was asked (a resumed search)."""
        import optuna

        for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.user_attrs.get(TUNE_TRIAL_ATTR) == trial_id:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
                return self._ot_trials[trial_id]
        return None

    def _told(self, ot_trial) -> bool:
        """Whether the study already holds this trial's outcome (told by a driver that then died)."""
        return self._storage.get_trial(ot_trial._trial_id).state.is_finished()

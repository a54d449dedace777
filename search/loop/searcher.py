"""Ray's ``OptunaSearch``, telling Optuna what a trial's status was and giving each trial its Optuna number.

- A trial ended at an early-stopping rung is PRUNED in the study (as Optuna's own pruners leave a trial), with the
  step and its part-way values as user attributes, so ``study.best_trials`` holds fully trained trials only.
- A config that cannot run completes with the worst value of every objective (``search.worker.infeasible``) and
  its status as a user attribute, so the study itself says which completed trials were never trained.
- Each trial's config carries the number of the Optuna trial that proposed it (``OPTUNA_TRIAL_KEY``), so the
  trials table links every row to its Optuna trial; the Optuna trial holds the resolved config (``CONFIG_ATTR``:
  candidate, method, quantization, PEFT config, learning rate), so ``optuna.load_study`` alone shows what ran.
"""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from peft_search.search.results.records import ERROR_KEY, OPTUNA_TRIAL_KEY, RUNG_KEY, STATUS_KEY

STATUS_ATTR = "peft_search.status"
CONFIG_ATTR = "peft_search.config"
CONFIG_KEYS = ("candidate", "method", "quantization", "peft_config", "learning_rate", "training")


class PeftOptunaSearch(OptunaSearch):
    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            config[OPTUNA_TRIAL_KEY] = ot_trial.number
            ot_trial.set_user_attr(CONFIG_ATTR, {k: config[k] for k in CONFIG_KEYS if k in config})
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id)
        if result and ot_trial is not None and trial_id not in self._completed_trials:
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

"""Early stopping in Ray Tune: the multi-objective ASHA rule of ``search.loop.rungs`` as a Tune trial scheduler.

Trials report a part-way result at each rung (``search.worker.training``); the scheduler answers ``STOP`` for a trial
its rung's other trials dominate. Tune then ends the trial (its training thread exits at its next report) and
tells the searcher: ``search.loop.searcher`` records a stopped trial as PRUNED in the Optuna study, as Optuna's
own pruners do, so ``study.best_trials`` holds fully trained trials only and TPE ranks stopped ones below them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from peft_search.search.loop.rungs import should_stop, standard_error
from peft_search.search.results.metrics import get_metric
from peft_search.search.results.records import RUNG_KEY


class ParetoASHA(FIFOScheduler):
    """Asynchronous successive halving over several objectives (``search.loop.rungs.should_stop`` at every rung).

    Args:
        objectives: ``(metric, mode)`` pairs, mode ``"max"`` or ``"min"``, as the search's objectives.
        reduction_factor: about ``1 / reduction_factor`` of a rung's dominated trials go on.
        noise_margin: a trial dominates another on a share measured on the rung's held-out rows (a metric with a
            confidence interval: accuracy) only by more than this many standard errors of the difference; 0
            compares the values as they are.
    """

    def __init__(
        self, objectives: Sequence[tuple[str, str]], reduction_factor: float, noise_margin: float = 0.0
    ):
        super().__init__()
        self._objectives = list(objectives)
        self._reduction_factor = reduction_factor
        self._margin = noise_margin
        self._noisy = [get_metric(m).interval is not None for m, _ in self._objectives]
        self._rungs: dict[int, dict[str, list[float]]] = {}
        self._noise: dict[int, dict[str, list[float]]] = {}
        self.stopped: dict[str, int] = {}
        """Trial id -> the rung step it was stopped at."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        step = result.get(RUNG_KEY)
        if step is None or any(result.get(m) is None for m, _ in self._objectives):
            return TrialScheduler.CONTINUE
        point = [float(result[m]) * (-1.0 if mode == "max" else 1.0) for m, mode in self._objectives]
        recorded = self._rungs.setdefault(int(step), {})
        recorded[trial.trial_id] = point
        noise = self._noise.setdefault(int(step), {})
        rows = result.get("eval_rows")
        noise[trial.trial_id] = [
            standard_error(float(result[m]), rows) if noisy else 0.0
            for (m, _), noisy in zip(self._objectives, self._noisy, strict=True)
        ]
        if should_stop(trial.trial_id, recorded, self._reduction_factor, noise, self._margin):
            self.stopped[trial.trial_id] = int(step)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        rungs = ", ".join(f"step {s}: {len(r)} trials" for s, r in sorted(self._rungs.items()))
        return f"ParetoASHA: {len(self.stopped)} stopped; rungs {rungs or 'none reached'}"

"""Spare cores, the driver's side (``resources.spare_cores``): once Tune has started every trial of the search, the
CPU trials still running share the cores no trial holds (as trials end, or as the last starts with cores idle); each
reads its grant at its next step (``search.worker.spare``). Only on the local Ray instance ``run`` starts: on a
cluster, cores no trial holds may be another job's."""

from __future__ import annotations

import ray
from ray import tune
from ray.experimental import internal_kv
from ray.tune.experiment import Trial

from peft_search.cluster import started_here
from peft_search.search.settings.trial import TrialSettings
from peft_search.search.worker.spare import NAMESPACE, threads_key


def applies(settings: TrialSettings) -> bool:
    """Whether the search's trials can take spare cores: asked for, CPU trials of one worker each, unpacked, on
    the local instance this process started."""
    r = settings.resources
    return (
        r.spare_cores
        and r.gpus_per_worker == 0
        and r.num_workers == 1
        and settings.packing <= 1
        and started_here()
    )


def settled(settings: TrialSettings) -> TrialSettings:
    """The settings the trials receive: ``spare_cores`` off where it cannot apply, so they never look for it."""
    if applies(settings) or not settings.resources.spare_cores:
        return settings
    return settings.with_resources(spare_cores=False)


def shares(cores: int, per_trial: int, running: list[str]) -> dict[str, int]:
    """Each running trial's threads when they split ``cores`` (the instance's CPUs) between them: its own
    ``per_trial`` plus an equal part of what no trial holds (the first ones one more where it does not divide)."""
    if not running:
        return {}
    spare = max(0, cores - per_trial * len(running))
    part, rest = divmod(spare, len(running))
    return {t: per_trial + part + (1 if i < rest else 0) for i, t in enumerate(sorted(running))}


def callbacks(settings: TrialSettings, search: str, num_samples: int) -> list[tune.Callback]:
    """The Tune callbacks a run of ``num_samples`` trials adds for spare cores: one, or none where it cannot
    apply."""
    if not applies(settings):
        return []
    cores = int(ray.cluster_resources().get("CPU", 1))
    return [SpareCores(search, num_samples, cores, max(1, int(settings.resources.cpus_per_worker)))]


class SpareCores(tune.Callback):
    """Grants the running trials the cores no trial holds, once no trial is left to start."""

    def __init__(self, search: str, num_samples: int, cores: int, per_trial: int) -> None:
        self.search, self.num_samples = search, num_samples
        self.cores, self.per_trial = cores, per_trial
        self.granted: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        # The last trial may start after the others ended (trials of one length end together).
        self._spread(trials, started=trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._spread(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._spread(trials, trial)

    def _spread(self, trials: list[Trial], ended: Trial | None = None, started: Trial | None = None) -> None:
        if len(trials) < self.num_samples or any(
            t.status == Trial.PENDING and t is not started for t in trials
        ):
            return  # the freed cores go to the next trial
        running = [
            t.trial_id for t in trials if (t.status == Trial.RUNNING or t is started) and t is not ended
        ]
        for trial_id, threads in shares(self.cores, self.per_trial, running).items():
            if threads > self.granted.get(trial_id, self.per_trial):
                internal_kv._internal_kv_put(
                    threads_key(self.search, trial_id), str(threads).encode(), namespace=NAMESPACE
                )
                self.granted[trial_id] = threads


__all__ = ["SpareCores", "applies", "callbacks", "settled", "shares"]

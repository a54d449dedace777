"""Ray Tune's side of a search: the Optuna sampler and study, the searcher, the scheduler, and the Tuner."""

from __future__ import annotations

import pickle
import warnings

from ray.tune.search import Searcher

from peft_search import spaces
from peft_search.search.loop import warm_start
from peft_search.search.loop.early_stopping import ParetoASHA
from peft_search.search.loop.prepare import Prepared
from peft_search.search.loop.recovery.private import hand_restored_tuner
from peft_search.search.loop.searcher import PeftOptunaSearch, SearchStorage
from peft_search.search.settings.schema import SearchConfig
from peft_search.search.verbosity import verbose


def make_sampler(name: str, seed: int, num_trials: int, n_startup_trials: int | None = None):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_trials // 3)))
    # Grouped multivariate TPE models the conditional space (method -> its knobs) jointly; the constant liar
    # keeps concurrent trials from piling onto the same point.
    startup = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    with warnings.catch_warnings():
        if not verbose():  # `group` and `constant_liar` are marked experimental: chosen, and measured, here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True, **startup
        )


def sampler_for_slot(name: str, seed: int, num_trials: int, n_startup_trials: int | None, slot: int):
    """The sampler that proposes the search's ``slot``-th trial: seeded by its place, so a resumed search proposes
    what an uninterrupted one would, whatever the sampler's saved random state (``PeftOptunaSearch.suggest``)."""
    return make_sampler(name, seed + slot, num_trials, n_startup_trials)


def make_searcher(cfg: SearchConfig, prep: Prepared, storage_url: str):
    """The Optuna study (created, or loaded when resuming) with the explicit candidates queued first, and the
    Tune searcher that asks it."""
    import functools

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = cfg.search
    storage = SearchStorage(storage_url)  # pickled by Tune without its place: the search may move
    sampler = make_sampler(s.sampler, s.seed, s.num_trials, s.n_startup_trials)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.name,
        sampler=sampler,
        directions=["maximize" if o.mode == "max" else "minimize" for o in cfg.objectives],
        load_if_exists=True,
    )
    # The study describes itself: plain `optuna.load_study` shows which value is which metric.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in cfg.objectives])
    if prep.warm_start is not None and not study.trials:  # a new study (a resumed one has them already)
        warm_start.add_previous_trials(study, cfg, prep.warm_start)
    spaces.enqueue_candidates(study, prep.space_spec)
    return PeftOptunaSearch(
        space=spaces.DefineByRun(prep.space_spec, prep.space_context),
        metric=[o.metric for o in cfg.objectives],
        mode=[o.mode for o in cfg.objectives],
        sampler=sampler,
        study_name=cfg.name,
        storage=storage,
        sampler_for_slot=functools.partial(
            sampler_for_slot, s.sampler, s.seed, s.num_trials, s.n_startup_trials
        ),
    )


def trial_name(trial) -> str:
    """Short, stable trial names (the id only): the sampled config lives in the results table, not in paths."""
    return f"trial-{trial.trial_id}"


def new_tuner(
    trainable,
    searcher,
    concurrency: int,
    callbacks: list,
    cfg: SearchConfig,
    storage_path: str,
    *,
    name: str = "tune",
    num_samples: int | None = None,
    stopping: bool = True,
):
    """The search's Tuner (``name`` "tune"), or another run of trials beside it (the seed repeats: their own
    ``name``, ``num_samples``, and no early stopping)."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=cfg.search.num_trials if num_samples is None else num_samples,
            max_concurrent_trials=concurrency,
            scheduler=scheduler(cfg) if stopping else FIFOScheduler(),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            # One actor serves trial after trial: torch, transformers and PEFT are imported once per actor.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures, fail_fast=False),
            # Mid-trial checkpoints (training.checkpoint_every): a restarted trial needs only the latest.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1 if verbose() else 0,  # -v: Tune's own status table too
        ),
    )


def restored_tuner(trainable, tune_path: str, searcher, callbacks: list):
    """The trials and the searcher's state come back from Tune's saved state, into this run's searcher and
    callbacks: the ones Tune pickled name the files where the search lived when it started, and it may have moved
    since (``PeftOptunaSearch.restore`` keeps this run's study)."""
    from ray import tune

    tuner = tune.Tuner.restore(
        tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
    )
    hand_restored_tuner(tuner, callbacks, searcher)
    return tuner


def scheduler(cfg: SearchConfig):
    """Tune's trial scheduler: first come, first served, or early stopping over the objectives at once (all of them,
    or those ``search.early_stopping.objectives`` names)."""
    from ray.tune.schedulers import FIFOScheduler

    es = cfg.search.early_stopping
    if es.rule == "none":
        return FIFOScheduler()
    ranked = [
        (o.metric, o.mode) for o in cfg.objectives if es.objectives is None or o.metric in es.objectives
    ]
    return ParetoASHA(ranked, es.reduction_factor, es.noise_margin)


class FixedConfigs(Searcher):
    """A Tune searcher that proposes exactly these configs, in order, then finishes (the seed repeats)."""

    def __init__(self, configs: list[dict]) -> None:
        super().__init__()
        self._left = [dict(c) for c in configs]

    def suggest(self, trial_id: str) -> dict | None:
        return self._left.pop(0) if self._left else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self._left, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self._left = pickle.load(f)

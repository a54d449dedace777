"""The search driver, in four phases: prepare (before Ray starts), launch (Ray, the study, the Tuner), collect
(Tune runs the trials; the trials table records them), finish (tidy the study, the run facts, the report)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from peft_search.search.errors import ConfigError
from peft_search.search.loop.home import SearchHome, claim, record_run, stage
from peft_search.search.loop.prepare import Prepared, prepare
from peft_search.search.results.layout import TRAIN_DIR, TUNE_DIR
from peft_search.search.settings.schema import SearchConfig


def run_search(
    cfg: SearchConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    echo: bool = True,
    resume: bool = False,
) -> Path:
    """Run the whole search (or, with ``resume``, finish one whose driver died); returns its directory."""
    from peft_search.search.results.lock import SearchLock
    from peft_search.search.worker.environment import quiet_bitsandbytes

    t0 = time.time()
    quiet_bitsandbytes()
    # Prepare: everything that can refuse the config, before Ray starts and before anything is written.
    home = claim(cfg, resume)
    # One writer per search: a second run of it fails here, at once, naming the one that holds it (where the results
    # directory does not exist yet, nothing can be writing there: the lock is taken once it is made, below).
    lock = SearchLock(cfg.search_dir())
    if cfg.search_dir().parent.is_dir():
        _lock(lock, cfg, resume, echo)
    try:
        env = _worker_env(cfg)
        if echo and cfg.resources.gpus_per_worker == 0 and not (env or {}).get("LD_PRELOAD"):
            print(f"[peft-search] {GLIBC_NOTE}", flush=True)
        prep = prepare(cfg)
        if not lock.held:
            _lock(lock, cfg, resume, echo)
        stage(cfg, home, resume)
        if resume and home.results.trials_path.exists():
            _repair_if_damaged(home, echo)
        # A damaged study is rebuilt from the table and the trials' configs; Tune's saved searcher, pointing at the
        # old study's trials, is then set aside.
        rebuilt = resume and _rebuild_study_if_damaged(cfg, prep, home, echo)
        reconciled = _reconcile(cfg, home, echo, trust_tune=not rebuilt) if resume else None
        # Launch.
        tuner, facts, table, restored, concurrency, _coordinator = _launch(
            cfg, prep, home, address, num_cpus, env, resume, echo, reconciled
        )
        # Collect: Tune runs the trials; the table callback records each one as it starts and ends.
        if tuner is not None:
            tuner.fit()
        if cfg.search.repeats is not None:
            # Repeat: the front's best configs again with new seeds (search.repeats), recorded in the same table.
            repeat_front(cfg, prep, home, table, concurrency)
        # Finish.
        # The table was never read when nothing was left to run: the one on disk stays.
        _finish(cfg, home, facts, table, tuner is None and cfg.search.repeats is None, echo, started=t0)
    finally:
        lock.release()
    return home.results.path


GLIBC_NOTE = (
    "CPU trials run on glibc's heap allocator here (no libjemalloc2): their peak resident memory runs 20-40 % over "
    "the planned estimate (benchmarks/RESULTS.md); `apt install libjemalloc2` brings it within 10 %"
)


def _lock(lock, cfg: SearchConfig, resume: bool, echo: bool) -> None:
    """Take the search's lock, then check again what ``claim`` checked: the run that held it may have finished
    this very search meanwhile, and a new search must not overwrite it."""
    from peft_search.search.results.lock import command_line

    took_over = lock.acquire(command_line())
    if took_over and echo:
        print(f"[peft-search] {took_over}", flush=True)
    try:
        claim(cfg, resume)
    except BaseException:
        lock.release()
        raise


def _repair_if_damaged(home: SearchHome, echo: bool) -> None:
    """A resume rebuilds a damaged trials table from the trials' own records first (``peft-search repair``)."""
    from peft_search.search.loop.repair import repair, table_is_readable

    if not table_is_readable(home.results):
        said = repair(home.results.path)
        if echo:
            print(f"[peft-search] {said}", flush=True)


def _rebuild_study_if_damaged(cfg: SearchConfig, prep: Prepared, home: SearchHome, echo: bool) -> bool:
    from peft_search.search.loop.study_rebuild import rebuild_study, study_is_damaged

    verdict = study_is_damaged(home.results)
    if verdict is None:
        return False
    said = rebuild_study(cfg, prep, home.results)
    if echo:
        print(f"[peft-search] the Optuna study was damaged ({verdict[:80]}); {said}", flush=True)
    return True


def _reconcile(cfg: SearchConfig, home: SearchHome, echo: bool, trust_tune: bool = True):
    """Before a resume restores anything: compare the search's records and fix the ones behind (``reconcile``).
    On an object store, Tune's state is reconciled in a local copy and what changed is copied back."""
    import tempfile

    from peft_search.search.loop.reconcile import reconcile
    from peft_search.search.results import storage

    objectives = [o.metric for o in cfg.objectives]
    if home.uri is None:
        said = reconcile(
            home.results,
            home.results.tune_path,
            cfg.name,
            cfg.search.num_trials,
            objectives,
            trust_tune=trust_tune,
        )
    else:
        with tempfile.TemporaryDirectory(prefix="tune-state-") as local:
            tune_uri = storage.join(home.uri, TUNE_DIR)
            storage.download_tree(tune_uri, Path(local))
            said = reconcile(
                home.results, Path(local), cfg.name, cfg.search.num_trials, objectives, trust_tune=trust_tune
            )
            storage.sync_back(Path(local), tune_uri, said.touched)
        for trial_id in said.dropped:  # the adapters live on the store; reconcile removed only local copies
            storage.remove_dir(home.uri, f"{TRAIN_DIR}/train-{trial_id}")
    if echo:
        print(f"[peft-search] {said.line()}", flush=True)
    return said


def _worker_env(cfg: SearchConfig) -> dict[str, str] | None:
    """CPU trials' heap allocator, preloaded into every worker Ray starts for this search (GPU trials keep theirs)."""
    from peft_search.cluster import worker_env
    from peft_search.search.verbosity import VERBOSE_ENV, verbose

    try:
        env = worker_env(cfg.resources.cpu_allocator, cfg.resources.gpus_per_worker)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if verbose():  # -v reaches the trials on a cluster too
        env = {**(env or {}), VERBOSE_ENV: "1"}
    return env


def _launch(
    cfg: SearchConfig,
    prep: Prepared,
    home: SearchHome,
    address: str | None,
    num_cpus: int | None,
    env: dict[str, str] | None,
    resume: bool,
    echo: bool,
    reconciled,
):
    """Start or join Ray, record the run, and build the Tuner (new, or restored from Tune's saved state; None when
    a resumed search has no trial left to run), and with ``search.packing`` the packed groups' coordinator."""
    from ray import tune

    from peft_search.cluster import connect, plan_concurrency
    from peft_search.search.loop import tuning
    from peft_search.search.loop.table import TrialTable
    from peft_search.search.loop.tracking import tracking_callbacks
    from peft_search.search.verbosity import verbose
    from peft_search.search.worker.trial import trial_driver, trial_resources

    resources = connect(address, num_cpus=num_cpus, env_vars=env)
    r = cfg.resources
    concurrency = plan_concurrency(
        resources,
        num_workers=r.num_workers,
        cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=r.gpus_per_worker,
        requested=cfg.search.max_concurrent,
    )
    coordinator = None
    level = _packing_level(prep) if prep.settings.packing > 1 else None
    if level is None:
        prep = dataclasses.replace(prep, settings=dataclasses.replace(prep.settings, packing=1))
    elif cfg.search.packing == "auto":  # pack only where the workers' device measures a gain
        from peft_search.search.worker.packing_auto import decide_packing

        prep = dataclasses.replace(prep, settings=decide_packing(prep.settings, prep.data, level, echo))
    if prep.settings.packing > 1:  # each packed trial's own function holds no CPU: its group's task does
        from peft_search.search.worker.pack_groups import start_coordinator

        # Room for every group's members (an explicit search.max_concurrent counts trials as it says).
        if cfg.search.max_concurrent is None:
            concurrency *= prep.settings.packing
        coordinator = start_coordinator(prep.settings, prep.data)  # kept alive by its handle, returned
    restored = reconciled is not None and reconciled.restore
    facts = record_run(cfg, prep, home, resources, concurrency, resume)
    # Tune saves its experiment state on its own schedule (every 10 s or more: the state holds every trial, so
    # saving it at every step made each trial's overhead grow with their number); a resume reconciles what it
    # missed from the table, the study and the trials' own files (``reconcile``).
    # Tune's own progress output (its experiment box, a TensorBoard hint) prints even at verbose=0 with its newer
    # reporter; the search prints its own lines (where the results go, each trial, progress), so use the classic
    # reporter, which verbose=0 keeps silent.
    if not verbose():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if cfg.training.checkpoint_every is not None and cfg.resources.num_workers == 1:
        # A mid-trial checkpoint is reported to Tune before any objective is measured; Tune's check that a trial's
        # first result holds every objective would fail the trial for it.
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    searcher = tuning.make_searcher(cfg, prep, home.results.optuna_url)
    home.upload()
    table = TrialTable(
        home.results,
        cfg.search.num_trials,
        [o.metric for o in cfg.objectives],
        echo=echo,
        on_write=home.mirror(),
    )
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, settings=prep.settings, data=prep.data),
        trial_resources(prep.settings),
    )
    callbacks = [table, *tracking_callbacks(cfg, home.results.path)]
    if restored:
        tuner = tuning.restored_tuner(trainable, home.tune_path, searcher, callbacks)
    elif reconciled is not None and reconciled.remaining == 0:
        tuner = None  # every trial finished: only the finishing steps were left
    else:
        owed = reconciled.remaining if reconciled is not None else None
        tuner = tuning.new_tuner(
            trainable, searcher, concurrency, callbacks, cfg, home.storage_path, num_samples=owed
        )
    return tuner, facts, table, restored, concurrency, coordinator


def _packing_level(prep: Prepared) -> str | None:
    """The quantization level ``search.packing: auto`` measures at: unquantized where the search's LoRA-family trials
    may train so, else their first level; None when none of its trials can pack."""
    from peft_search.search.plan.packable import packing_refusal
    from peft_search.spaces.sampling import feasible_quantization

    spec = prep.space_spec
    levels = feasible_quantization("lora", spec.quantization) if "lora" in spec.methods else []
    levels += [c.quantization for c in spec.candidates if packing_refusal(c.peft_config) is None]
    return "none" if "none" in levels else (levels[0] if levels else None)


def repeat_front(cfg: SearchConfig, prep: Prepared, home: SearchHome, table, concurrency: int) -> int:
    """Train the front's best configs again with new seeds as ordinary trials linked to their original (the
    repeats a resumed search already ran are not run again); returns how many ran."""
    from ray import tune

    from peft_search.search.loop.tracking import tracking_callbacks
    from peft_search.search.loop.tuning import FixedConfigs, new_tuner
    from peft_search.search.results.repeats import to_repeat
    from peft_search.search.worker.trial import trial_driver, trial_resources

    r = cfg.search.repeats
    assert r is not None
    table.setup()  # the rows so far (when the search's own Tuner ran nothing, they were never read)
    configs = to_repeat(home.results.read_records(), cfg.objectives, r.top, r.seeds, cfg.search.seed)
    if not configs:
        return 0
    table.num_trials = len(table.records) + len(configs)
    # Repeats train to the end (no rung evaluations), each alone (a repeat's seed is its own: none would pack).
    settings = dataclasses.replace(prep.settings, rungs=(), packing=1)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, settings=settings, data=prep.data), trial_resources(settings)
    )
    repeats = new_tuner(
        trainable,
        FixedConfigs(configs),
        concurrency,
        [table, *tracking_callbacks(cfg, home.results.path)],
        cfg,
        home.storage_path,
        name="tune-repeats",
        num_samples=len(configs),
        stopping=False,
    )
    repeats.fit()
    return len(configs)


def _finish(
    cfg: SearchConfig,
    home: SearchHome,
    facts: dict[str, Any],
    table,
    table_kept: bool,
    echo: bool,
    started: float,
) -> None:
    """Close what a dead driver left in the study, record the wall time, write the table and the report."""
    from peft_search.reports.html import write_report
    from peft_search.search.loop.resume import close_stale_trials

    stale = close_stale_trials(home.results.optuna_url, cfg.name)
    if stale and echo:
        print(f"[peft-search] closed {stale} Optuna trial(s) a dead driver had left running", flush=True)
    home.results.write_facts({**facts, "wall_time_s": time.time() - started})
    if not table_kept:
        table.write()
    write_report(home.results.path)
    home.upload()

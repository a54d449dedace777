"""The search driver, in four phases: prepare (before Ray starts), launch (Ray, the study, the Tuner), collect
(Tune runs the trials; the trials table records them), finish (tidy the study, the run facts, the report)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from peft_search.cluster import connect, plan_concurrency, ray_line, started_here, unplaceable, worker_env
from peft_search.reports.html import write_report
from peft_search.reports.race import read_race
from peft_search.search.errors import ConfigError
from peft_search.search.loop import recovery, spare, tuning
from peft_search.search.loop.home import SearchHome, claim, record_run, stage
from peft_search.search.loop.prepare import Prepared, prepare
from peft_search.search.loop.table import TrialTable
from peft_search.search.loop.tracking import tracking_callbacks
from peft_search.search.loop.tuning import FixedConfigs, new_tuner
from peft_search.search.results.lock import SearchLock, command_line
from peft_search.search.results.race import next_round
from peft_search.search.results.repeats import to_repeat
from peft_search.search.settings.schema import SearchConfig
from peft_search.search.verbosity import LOG_ENV, VERBOSE_ENV, to_log, verbose
from peft_search.search.worker import heap as worker_heap
from peft_search.search.worker import packed, threads
from peft_search.search.worker.environment import quiet_bitsandbytes
from peft_search.search.worker.placement import worker_resources
from peft_search.search.worker.trial import trial_driver, trial_resources
from peft_search.spaces.sampling import DefineByRun


def run_search(
    cfg: SearchConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    echo: bool = True,
    resume: bool = False,
) -> Path:
    """Run the whole search (or, with ``resume``, finish one whose driver died); returns its directory."""

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
        prep = prepare(cfg)
        if not lock.held:
            _lock(lock, cfg, resume, echo)
        stage(cfg, home, resume)
        reconciled = None
        if resume:
            space = DefineByRun(prep.space_spec, prep.space_context)
            reconciled = recovery.recover(cfg, space, home.results, home.uri, echo)
        if _nothing_left(cfg, reconciled):
            # A finished search resumed: Ray does not start only to find that out (20-30 s); its facts stay.
            _finish(cfg, home, facts=None, table=None, table_kept=True, echo=echo, started=t0)
            return home.results.path
        # Launch.
        tuner, facts, table, prep, concurrency, _coordinator = _launch(
            cfg, prep, home, address, num_cpus, env, resume, echo, reconciled
        )
        # Collect: Tune runs the trials; the table callback records each one as it starts and ends.
        if tuner is not None:
            _fit(tuner, table)
        if cfg.search.repeats is not None:
            # Repeat: the front's best configs again with new seeds (search.repeats), recorded in the same table.
            repeat_front(cfg, prep, home, table, concurrency)
        if cfg.search.race is not None:
            # Race the configs tied with the most accurate one over new seeds (search.race), in the same table.
            race_ties(cfg, prep, home, table, concurrency, echo)
        # Finish.
        # The table was never read when nothing was left to run: the one on disk stays.
        kept = tuner is None and cfg.search.repeats is None and cfg.search.race is None
        _finish(cfg, home, facts, table, kept, echo, started=t0)
    finally:
        lock.release()
    return home.results.path


def _fit(tuner, table: TrialTable) -> None:
    """Run a Tuner to its end. Ctrl-C ends Tune's run early, its state saved, and ``fit`` returns as if done (the
    trials it stopped show as terminated): a trial whose last result is not its final one (``done``, also set when
    the scheduler stops it) and that the table does not show finished either (its final result may have been
    recorded just before the signal) means an interrupt (the command says so and how to resume)."""
    grid = tuner.fit()
    for result in grid:
        metrics = result.metrics or {}
        if result.error is not None or metrics.get("done"):
            continue
        record = table.records.get(str(metrics.get("trial_id")))
        if record is None or record.status == "running":
            raise KeyboardInterrupt


def _nothing_left(cfg: SearchConfig, reconciled) -> bool:
    """Whether a resumed search has no trial to run again or ask for, and no repeats or race that could be owed."""
    return (
        reconciled is not None
        and reconciled.rerun == 0
        and reconciled.remaining == 0
        and cfg.search.repeats is None
        and cfg.search.race is None
    )


def _lock(lock, cfg: SearchConfig, resume: bool, echo: bool) -> None:
    """Take the search's lock, then check again what ``claim`` checked: the run that held it may have finished
    this very search meanwhile, and a new search must not overwrite it."""

    took_over = lock.acquire(command_line())
    if took_over and echo:
        print(f"[peft-search] {took_over}", flush=True)
    try:
        claim(cfg, resume)
    except BaseException:
        lock.release()
        raise


def _worker_env(cfg: SearchConfig) -> dict[str, str] | None:
    """CPU trials' heap allocator, preloaded into every worker Ray starts for this search (GPU trials keep theirs)."""

    try:
        env = worker_env(cfg.resources.cpu_allocator, cfg.resources.gpus_per_worker)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if verbose():  # -v reaches the trials on a cluster too
        env = {**(env or {}), VERBOSE_ENV: "1"}
    if os.environ.get(LOG_ENV):  # the trials' library warnings join the command's log (on this machine)
        env = {**(env or {}), LOG_ENV: os.environ[LOG_ENV]}
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

    if not verbose():
        # Ray's own lines (its start, the token notice, Tune's saves) go to the log; one line of ours says it.
        to_log(logging.getLogger("ray"))
    resources = connect(address, num_cpus=num_cpus, env_vars=env)
    if echo and not verbose():
        print(f"[peft-search] {ray_line()}", flush=True)
    if cfg.resources.cpus_per_worker == "auto":
        prep = dataclasses.replace(prep, settings=_threads(prep, echo))
        cfg = prep.settings.config
    _check_placeable(prep.settings, echo)
    if cfg.resources.gpus_per_worker == 0:
        levels = [q for q in prep.space_spec.quantization] + [
            c.quantization for c in prep.space_spec.candidates
        ]
        heap = worker_heap.heap_model(prep.settings, prep.data, levels, env, echo)
        prep = dataclasses.replace(prep, settings=dataclasses.replace(prep.settings, heap=heap))
    r = cfg.resources
    concurrency = plan_concurrency(
        resources,
        num_workers=r.num_workers,
        cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=r.gpus_per_worker,
        requested=cfg.search.max_concurrent,
    )
    settings, coordinator = packed.start_packing(
        prep.settings, prep.space_spec, prep.data, auto=cfg.search.packing == "auto", echo=echo
    )
    prep = dataclasses.replace(prep, settings=spare.settled(settings))
    if settings.packing > 1 and cfg.search.max_concurrent is None:
        # Room for every group's members: each packed trial's own function holds no CPU, its group's task does (an
        # explicit search.max_concurrent counts trials as it says).
        concurrency *= settings.packing
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
    total = cfg.search.num_trials if reconciled is None or restored else reconciled.remaining
    callbacks = [
        table,
        *tracking_callbacks(cfg, home.results.path),
        *spare.callbacks(prep.settings, cfg.name, total),
    ]
    if restored:
        tuner = tuning.restored_tuner(trainable, home.tune_path, searcher, callbacks)
    elif reconciled is not None and reconciled.remaining == 0:
        tuner = None  # every trial finished: only the finishing steps were left
    else:
        owed = reconciled.remaining if reconciled is not None else None
        tuner = tuning.new_tuner(
            trainable, searcher, concurrency, callbacks, cfg, home.storage_path, num_samples=owed
        )
    return tuner, facts, table, prep, concurrency, coordinator


def _check_placeable(settings, echo: bool) -> None:
    """A trial shape no node can hold: refused on a local instance (it would wait for ever for a node), said in one
    line on a cluster (whose autoscaler may add one)."""
    r = settings.resources
    short = unplaceable(worker_resources(settings), r.num_workers)
    if short is None:
        return
    key, largest, total = short
    field, per = (
        ("gpus_per_worker", r.gpus_per_worker) if key == "GPU" else ("cpus_per_worker", r.cpus_per_worker)
    )
    fix = (
        "set resources.gpus_per_worker: 0 to train on CPU, or run where Ray sees a GPU"
        if key == "GPU"
        else "lower it or resources.num_workers, or set cpus_per_worker: auto"
    )
    has = (
        f"the local Ray instance has {total:g}"
        if started_here()
        else f"the cluster has {total:g} (at most {largest:g} on a node)"
    )
    message = f"resources.{field}: {r.num_workers} worker(s) of {per:g} {key} cannot be placed: {has}; {fix}"
    if started_here():
        raise ConfigError(message)
    if echo:
        print(f"[peft-search] {message}; the trials wait until the cluster has a node for them", flush=True)


def _threads(prep: Prepared, echo: bool):
    """``resources.cpus_per_worker: auto``: the settings with the threads per trial measured on the largest node
    (CPU trials of one worker), or 1 CPU a worker (GPU trials; and a multi-worker trial's share of a node)."""
    import ray

    settings, r = prep.settings, prep.settings.resources
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    node = max(nodes, key=lambda n: n["Resources"]["CPU"])
    node_cpus = int(node["Resources"]["CPU"])
    if r.gpus_per_worker > 0:
        return threads.with_threads(settings, 1)
    if r.num_workers > 1:
        return threads.with_threads(settings, max(1, node_cpus // r.num_workers))
    return threads.decide_threads(settings, prep.data, node_cpus, node["NodeManagerAddress"], echo)


def packing_note(rows: list[dict[str, Any]], cfg: SearchConfig) -> str | None:
    """``peft-search plan``'s line on ``search.packing`` (which candidates can pack, the heaviest group's peak)."""
    return packed.packing_note(
        rows, cfg.members_per_group(), cfg.budget.max_memory, measured=cfg.search.packing == "auto"
    )


def repeat_front(cfg: SearchConfig, prep: Prepared, home: SearchHome, table, concurrency: int) -> int:
    """Train the front's best configs again with new seeds as ordinary trials linked to their original (the
    repeats a resumed search already ran are not run again); returns how many ran."""
    r = cfg.search.repeats
    assert r is not None
    table.setup()  # the rows so far (when the search's own Tuner ran nothing, they were never read)
    configs = to_repeat(home.results.read_records(), cfg.objectives, r.top, r.seeds, cfg.search.seed)
    return train_again(cfg, prep, home, table, concurrency, configs, "tune-repeats")


def race_ties(
    cfg: SearchConfig, prep: Prepared, home: SearchHome, table, concurrency: int, echo: bool
) -> None:
    """``search.race``: round after round, the configs still in the race train again with one new seed, until the
    race stops (``search.results.race``: replayed from the table, so a resumed search goes on where it was)."""
    table.setup()
    while True:
        state = read_race(home.results.path)
        if state is None or len(state.entrants) < 2:
            if echo:
                print(
                    "[peft-search] race: no config ties with the most accurate one; nothing to race",
                    flush=True,
                )
            return
        if state.stop is not None:
            if echo:
                print(f"[peft-search] race: {state.detail}", flush=True)
            return
        configs = next_round(home.results.read_trials(), state, cfg.search.seed)
        if not configs:  # a run of the round is in the table, still "running": `resume` runs it again
            if echo:
                print(
                    f"[peft-search] race: round {state.rounds + 1} has a run the table does not show finished; "
                    "`peft-search resume` finishes the race",
                    flush=True,
                )
            return
        if echo:
            print(f"[peft-search] race: {state.detail}", flush=True)
        train_again(cfg, prep, home, table, concurrency, configs, f"tune-race-{state.rounds + 1}")


def train_again(
    cfg: SearchConfig,
    prep: Prepared,
    home: SearchHome,
    table,
    concurrency: int,
    configs: list[dict],
    name: str,
) -> int:
    """Train ``configs`` (seed repeats, a race's round) to the end as ordinary trials recorded in the search's
    table; returns how many ran."""
    from ray import tune

    if not configs:
        return 0
    table.num_trials = len(table.records) + len(configs)
    # Trained to the end (no rung evaluations), each alone (a run's seed is its own: none would pack).
    settings = dataclasses.replace(prep.settings, rungs=(), packing=1)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, settings=settings, data=prep.data), trial_resources(settings)
    )
    again = new_tuner(
        trainable,
        FixedConfigs(configs),
        concurrency,
        [
            table,
            *tracking_callbacks(cfg, home.results.path),
            *spare.callbacks(settings, cfg.name, len(configs)),
        ],
        cfg,
        home.storage_path,
        name=name,
        num_samples=len(configs),
        stopping=False,
    )
    _fit(again, table)
    return len(configs)


def _finish(
    cfg: SearchConfig,
    home: SearchHome,
    facts: dict[str, Any] | None,
    table,
    table_kept: bool,
    echo: bool,
    started: float,
) -> None:
    """Close what a dead driver left in the study, record the run's facts and wall time (``facts``: None keeps
    those on disk), write the table and the report."""

    stale = recovery.close_stale_trials(home.results.optuna_url, cfg.name)
    if stale and echo:
        print(f"[peft-search] closed {stale} Optuna trial(s) a dead driver had left running", flush=True)
    if facts is not None:
        home.results.write_facts({**facts, "wall_time_s": time.time() - started})
    if not table_kept:
        table.write()
    write_report(home.results.path)
    home.upload()

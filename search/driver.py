"""The search driver: prepare once, then let Ray Tune run the trials with Optuna choosing them."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import spaces
from search import storage as remote
from search.config import ConfigError, SearchConfig
from search.data import Splits, TokenizedSplits

CONFIG_FILE = "config.yaml"
OPTUNA_FILE = "optuna.db"
RUN_FILE = "run.json"


@dataclass
class Prepared:
    """Everything computed once per search before Ray starts."""

    model_path: str
    facts: Any
    splits: Splits
    data: TokenizedSplits
    space_context: spaces.SpaceContext
    space_spec: spaces.SpaceSpec
    steps: int
    rungs: list[int]
    """Training steps at which trials are evaluated part-way for early stopping (empty: none)."""


def prepare(cfg: SearchConfig) -> Prepared:
    """Validate the model and data against the config and tokenize once. Raises ``ConfigError`` early."""
    from transformers import AutoTokenizer

    from search import data as data_mod
    from search.candidates import check_candidates
    from search.modeling import meta_model, model_facts
    from search.training import total_steps

    model_path = cfg.model.resolved_path()
    if not Path(model_path).exists() and (
        model_path.startswith((".", "/", "~")) or model_path.count("/") > 1
    ):
        raise ConfigError(
            f"model.name_or_path: no directory at {model_path}; give a model directory or a hub id"
        )
    if Path(model_path).is_dir() and not (Path(model_path) / "config.json").is_file():
        raise ConfigError(
            f"model.name_or_path: {model_path} has no config.json; give a Hugging Face model directory"
        )
    try:
        records = data_mod.load_records(cfg.dataset.source, cfg.dataset.subset, cfg.dataset.split)
    except data_mod.DatasetError as err:
        raise ConfigError(str(err)) from None
    d = cfg.dataset
    try:
        if cfg.model.task == "sequence-classification":
            splits = data_mod.split_classification(
                records,
                text=d.text_column,
                label=d.label_column,
                per_class=d.train_per_class,
                eval_size=d.eval_size,
                seed=d.seed,
            )
        else:
            splits = data_mod.split_causal(
                records,
                prompt=d.prompt_column,
                answer=d.answer_column,
                train_size=d.train_size,
                eval_size=d.eval_size,
                seed=d.seed,
            )
    except data_mod.DatasetError as err:
        raise ConfigError(str(err)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=cfg.model.revision)
        base = meta_model(model_path, cfg.model.task, max(len(splits.label_names), 2), cfg.model.revision)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"model.name_or_path: cannot load {cfg.model.name_or_path!r} ({first})") from None
    facts = model_facts(base)
    check_candidates(
        cfg.space.candidates, [n for n, _ in base.named_modules()], facts.num_layers, cfg.model.task
    )
    try:
        tokenized = data_mod.tokenize(splits, tokenizer, cfg.model.task, cfg.training.max_seq_length)
    except data_mod.DatasetError as err:
        raise ConfigError(str(err)) from None
    steps = total_steps(
        len(tokenized.train),
        cfg.training.batch_size,
        cfg.resources.num_workers,
        None if cfg.training.epochs else cfg.training.max_steps,
        cfg.training.epochs,
    )
    ctx = space_context(cfg, facts, steps)
    spec = space_spec(cfg)
    return Prepared(model_path, facts, splits, tokenized, ctx, spec, steps, early_stopping_rungs(cfg, steps))


def early_stopping_rungs(cfg: SearchConfig, steps: int) -> list[int]:
    """The rung steps of ``search.early_stopping``; an error when none falls inside a trial's training."""
    from search.rungs import rung_steps

    es = cfg.search.early_stopping
    if es.rule == "none":
        return []
    rungs = rung_steps(steps, es.grace_steps, es.reduction_factor)
    if not rungs:
        raise ConfigError(
            f"search.early_stopping.grace_steps: {es.grace_steps} is not below the trials' {steps} training "
            f"steps; lower it (or leave it unset for steps / reduction_factor)"
        )
    return rungs


def space_context(cfg: SearchConfig, facts, steps: int) -> spaces.SpaceContext:
    """What the space may know about this model; fails early when a target set matches nothing in it."""
    from spaces.targets import norm_suffixes

    target_sets, mlp_targets = spaces.resolve_target_sets(facts.linear_modules)
    if not target_sets and cfg.space.methods:
        raise ConfigError(
            f"space.targets: {cfg.model.name_or_path} has no nn.Linear layers to target (GPT-2's are Conv1D); "
            "search only space.candidates with explicit target_modules (space.methods: [])"
        )
    missing = [t for t in cfg.space.targets if t not in target_sets]
    if missing:
        raise ConfigError(
            f"space.targets: {missing} match no linear layer of {cfg.model.name_or_path}; "
            f"use {sorted(target_sets)}"
        )
    return spaces.SpaceContext(
        task_type="SEQ_CLS" if cfg.model.task == "sequence-classification" else "CAUSAL_LM",
        num_layers=facts.num_layers,
        target_sets=target_sets,
        mlp_targets=mlp_targets,
        norm_targets=norm_suffixes(facts.norm_modules),
        targets=tuple(cfg.space.targets),
        layers=tuple(cfg.space.layers),
        ranks=tuple(cfg.space.ranks),
        alpha_ratios=tuple(cfg.space.alpha_ratios),
        dropouts=tuple(cfg.space.dropouts),
        virtual_tokens=tuple(cfg.space.virtual_tokens),
        total_steps=steps,
    )


def space_spec(cfg: SearchConfig) -> spaces.SpaceSpec:
    return spaces.SpaceSpec(
        methods=tuple(cfg.space.methods),
        quantization=tuple(cfg.space.quantization),
        learning_rate=cfg.training.learning_rate,
        candidates=tuple(
            spaces.Candidate(c.name, dict(c.peft_config), c.quantization, c.learning_rate)
            for c in cfg.space.candidates
        ),
    )


def trial_settings(cfg: SearchConfig, prep: Prepared, search_dir: Path) -> dict[str, Any]:
    """The flat settings every trial receives (builders take flat arguments, not the config object)."""
    from search.faults import faults_from_env

    t, r = cfg.training, cfg.resources
    return {
        "model_path": prep.model_path,
        "revision": cfg.model.revision,
        "task": cfg.model.task,
        "precision": t.precision,
        "gradient_checkpointing": t.gradient_checkpointing,
        "train_sampling_strategy": t.train_sampling_strategy,
        "batch_size": t.batch_size,
        "eval_batch_size": t.eval_batch_size,
        "max_steps": prep.steps,
        "max_seq_length": t.max_seq_length,
        "max_trainable_params": cfg.budget.max_trainable_params,
        "max_memory": cfg.budget.max_memory,
        "epochs": None,
        "warmup_ratio": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "seed": cfg.search.seed,
        "num_workers": r.num_workers,
        "cpus_per_worker": r.cpus_per_worker,
        "gpus_per_worker": r.gpus_per_worker,
        "rungs": list(prep.rungs),
        "rung_eval_size": cfg.search.early_stopping.eval_size,
        "storage_path": str(search_dir / "train"),
        "faults": faults_from_env(),  # chaos tests only (search.faults); empty normally
    }


def make_sampler(name: str, seed: int, num_trials: int, n_startup_trials: int | None = None):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_trials // 3)))
    # Grouped multivariate TPE models the conditional space (method -> its knobs) jointly; the constant liar
    # keeps concurrent trials from piling onto the same point.
    startup = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True, **startup)


def check_search_dir(search_dir: Path) -> None:
    """Never overwrite an earlier search, nor take over a directory of other files; fail before Ray starts."""
    import os

    for parent in [search_dir, *search_dir.parents]:
        if parent.exists():
            break
    if not parent.is_dir():
        raise ConfigError(f"results_dir: {parent} is not a directory; pass another --results-dir")
    if parent == search_dir and (search_dir / CONFIG_FILE).exists():
        raise ConfigError(
            f"results_dir: {search_dir} already holds a search; pass --name NEW or --results-dir DIR to start "
            "another, or move the old results away"
        )
    if parent == search_dir and any(search_dir.iterdir()):
        raise ConfigError(
            f"results_dir: {search_dir} holds other files and is not a peft-search results directory; "
            "pass --name NEW or --results-dir DIR"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"results_dir: cannot write to {parent}; pass another --results-dir")


def write_inputs(cfg: SearchConfig, prep: Prepared, search_dir: Path) -> None:
    import pandas as pd

    from search.redact import redact

    search_dir.mkdir(parents=True, exist_ok=True)
    config = redact(cfg.model_dump(mode="json"))  # credentials never reach the results directory
    (search_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    data_dir = search_dir / "data"
    data_dir.mkdir(exist_ok=True)
    pd.DataFrame(prep.splits.train).to_parquet(data_dir / "train.parquet", index=False)
    pd.DataFrame(prep.splits.eval).to_parquet(data_dir / "eval.parquet", index=False)


def run_facts(
    cfg: SearchConfig, prep: Prepared, resources: dict[str, float], concurrency: int
) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from search.redact import redact

    versions = {}
    for pkg in ("peft-search", "ray", "torch", "transformers", "peft", "bitsandbytes", "optuna"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    facts = {
        "name": cfg.name,
        "model": cfg.model.name_or_path,
        "model_type": prep.facts.model_type,
        "task": cfg.model.task,
        "dataset": cfg.dataset.source,
        "label_names": prep.splits.label_names,
        "train_examples": len(prep.splits.train),
        "eval_examples": len(prep.splits.eval),
        "train_steps": prep.steps,
        "objectives": [o.model_dump() for o in cfg.objectives],
        "sampler": cfg.search.sampler,
        "num_trials": cfg.search.num_trials,
        "early_stopping": {**cfg.search.early_stopping.model_dump(), "rungs": list(prep.rungs)},
        "concurrency": concurrency,
        "cluster_resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "target_sets": dict(prep.space_context.target_sets),
    }
    return redact(facts)


def trial_name(trial) -> str:
    """Short, stable trial names (the id only): the sampled config lives in the results table, not in paths."""
    return f"trial-{trial.trial_id}"


def run_search(
    cfg: SearchConfig,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    echo: bool = True,
    resume: bool = False,
):
    """Run the whole search (or, with ``resume``, finish one whose driver died); returns its directory."""
    import optuna
    from ray import tune

    from cluster import connect, plan_concurrency, worker_env
    from search import resume as resuming
    from search.early_stopping import StoppingOptunaSearch
    from search.redact import redact
    from search.results import TRIALS_FILE, TrialTable
    from search.trial import trial_driver, trial_resources

    search_dir, uri = cfg.search_dir(), cfg.results_uri()
    if uri is not None:
        _stage(uri, search_dir, resume)
    if resume:
        resuming.check_resumable(redact(cfg.model_dump(mode="json")), search_dir)
    else:
        check_search_dir(search_dir)
    # CPU trials' heap allocator: preloaded into every worker Ray starts for this search (GPU trials keep theirs).
    env = worker_env(cfg.resources.cpu_allocator, cfg.resources.gpus_per_worker)
    t0 = time.time()
    prep = prepare(cfg)
    resources = connect(address, num_cpus=num_cpus, env_vars=env)
    r = cfg.resources
    concurrency = plan_concurrency(
        resources,
        num_workers=r.num_workers,
        cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=r.gpus_per_worker,
        requested=cfg.search.max_concurrent,
    )
    tune_path = remote.join(uri, resuming.TUNE_DIR) if uri else str(search_dir / resuming.TUNE_DIR)
    restore = resume and resuming.can_restore(tune_path)
    if not restore:
        write_inputs(cfg, prep, search_dir)
    facts = run_facts(cfg, prep, resources, concurrency)
    if restore:
        earlier = json.loads((search_dir / RUN_FILE).read_text())
        facts["resumed"] = [*earlier.get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
    (search_dir / RUN_FILE).write_text(json.dumps(facts, indent=2))
    # Tune saves its experiment state (trials, searcher) at every step rather than every ~10 s, so a driver
    # killed just after a trial finished does not run it again on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(
        cfg.search.sampler, cfg.search.seed, cfg.search.num_trials, cfg.search.n_startup_trials
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{search_dir / OPTUNA_FILE}")
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.name,
        sampler=sampler,
        directions=["maximize" if o.mode == "max" else "minimize" for o in cfg.objectives],
        load_if_exists=True,
    )
    spaces.enqueue_candidates(study, prep.space_spec)
    searcher = StoppingOptunaSearch(
        space=spaces.define_space(prep.space_spec, prep.space_context),
        metric=[o.metric for o in cfg.objectives],
        mode=[o.mode for o in cfg.objectives],
        sampler=sampler,
        study_name=cfg.name,
        storage=storage,
    )
    mirror = None
    if uri is not None:
        # The driver's files follow every trial to the object store (Tune writes its own there directly).
        mirror = remote.Mirror(search_dir, uri, [TRIALS_FILE, OPTUNA_FILE, RUN_FILE])
        remote.upload(search_dir, uri)
    table = TrialTable(search_dir, cfg.search.num_trials, echo=echo, on_write=mirror)
    settings = trial_settings(cfg, prep, search_dir)
    if uri is not None:
        settings["storage_path"] = remote.join(uri, remote.TRAIN_DIR)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, settings=settings, data=prep.data), trial_resources(settings)
    )
    if restore:
        # The trials, the searcher (with its Optuna study) and the callbacks come back from Tune's state.
        tuner = tune.Tuner.restore(
            tune_path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        tuner = _new_tuner(trainable, searcher, concurrency, table, cfg, uri or str(search_dir))
    tuner.fit()
    stale = resuming.close_stale_trials(storage, cfg.name)
    if stale and echo:
        print(f"[peft-search] closed {stale} Optuna trial(s) a dead driver had left running", flush=True)
    facts["wall_time_s"] = time.time() - t0
    (search_dir / RUN_FILE).write_text(json.dumps(facts, indent=2))
    if not restore:
        table.write()  # a restored search's table is the one Tune restored with its callbacks
    from reports.html import write_report

    write_report(search_dir)
    if uri is not None:
        remote.upload(search_dir, uri)
    return search_dir


def _stage(uri: str, staging: Path, resume: bool) -> None:
    """The local staging copy of a search on an object store: fresh for a new search (refused if the store
    already holds one there), the store's files for a resumed one."""
    import shutil

    held = remote.exists(uri, CONFIG_FILE)
    if not resume and held:
        raise ConfigError(
            f"results_dir: {remote.redacted(uri)} already holds a search; pass --name NEW or --results-dir URI to start "
            "another, or `peft-search resume` to finish that one"
        )
    if staging.exists():
        shutil.rmtree(staging)  # only ever a copy: the store is the search's home
    if resume and held:
        remote.download(uri, staging)


def _new_tuner(trainable, searcher, concurrency: int, table, cfg: SearchConfig, storage_path: str):
    from ray import tune

    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=cfg.search.num_trials,
            max_concurrent_trials=concurrency,
            scheduler=_scheduler(cfg),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            # One actor serves trial after trial: torch, transformers and PEFT are imported once per actor.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=storage_path,
            callbacks=[table],
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures, fail_fast=False),
            verbose=0,
        ),
    )


def _scheduler(cfg: SearchConfig):
    """Tune's trial scheduler: first come, first served, or early stopping over all objectives at once."""
    from ray.tune.schedulers import FIFOScheduler

    from search.early_stopping import ParetoASHA

    es = cfg.search.early_stopping
    if es.rule == "none":
        return FIFOScheduler()
    return ParetoASHA([(o.metric, o.mode) for o in cfg.objectives], es.reduction_factor)

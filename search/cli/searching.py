"""``run``, ``resume`` and ``plan``: a search from its config (and ``--set`` overrides)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peft_search.reports import load_trials, summary_table
from peft_search.search.errors import ConfigError
from peft_search.search.loop.driver import packing_note, run_search
from peft_search.search.loop.recovery import load_saved_config
from peft_search.search.plan.planning import format_plan, plan_search, resolution_note
from peft_search.search.redact import redact_text
from peft_search.search.results import storage
from peft_search.search.settings.loading import default_config_path, load_config


def set_overrides(args: argparse.Namespace) -> dict:
    """``--set KEY.PATH=VALUE`` (repeatable), each value read as YAML; validated with the file, like its keys."""
    import yaml

    overrides = {}
    for text in getattr(args, "set", None) or []:
        key, eq, raw = text.partition("=")
        if not eq or not key.strip() or not all(part.strip() for part in key.split(".")):
            raise ConfigError(
                f"--set: {text!r} is not KEY.PATH=VALUE; write e.g. --set training.max_steps=50"
            )
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: {raw!r} is not a YAML value; quote it") from None
    return overrides


def run(args: argparse.Namespace) -> int:
    overrides = set_overrides(args)
    if args.num_trials is not None:
        overrides["search.num_trials"] = args.num_trials
    if args.results_dir is not None:
        overrides["results_dir"] = args.results_dir
    if args.name is not None:
        overrides["name"] = args.name
    if getattr(args, "results_dir_to_resume", None):
        cfg = load_saved_config(args.results_dir_to_resume)
    else:
        path = Path(args.config) if args.config else default_config_path()
        cfg = load_config(path, overrides)
    resume = bool(getattr(args, "resume", False) or getattr(args, "results_dir_to_resume", None))

    uri = cfg.results_uri()
    where = cfg.search_dir() if uri is None else f"{storage.redacted(uri)} (staged in {cfg.search_dir()})"

    print(
        redact_text(
            f"[peft-search] search {cfg.name!r}: {cfg.search.num_trials} trials of {cfg.model.name_or_path} "
            f"on {cfg.dataset.source}; results in {where}"
        ),
        flush=True,
    )
    search_dir = run_search(cfg, address=args.address, num_cpus=args.num_cpus, resume=resume)

    trials = load_trials(search_dir)
    print()
    print(summary_table(trials))
    done = trials["status"].eq("complete").sum()
    home = search_dir if uri is None else storage.redacted(uri)
    print(f"\n[peft-search] {done}/{len(trials)} trials complete. Results: {home}")
    print(f"[peft-search]   report: {home}/report.html")
    print(f"[peft-search]   trials table: {home}/trials.parquet   Optuna storage: {home}/optuna.db")
    return 0


def plan(args: argparse.Namespace) -> int:
    import json

    cfg = load_config(args.config, set_overrides(args))
    rows = plan_search(
        cfg, samples=args.samples, num_labels=args.num_labels, seed=cfg.search.seed, jobs=args.jobs
    )
    notes = [resolution_note(cfg.dataset.eval_size)]
    notes += filter(
        None,
        [packing_note(rows, cfg)],
    )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        print("\n".join(notes), file=sys.stderr)  # stdout stays machine-readable
    else:
        print(format_plan(rows))
        print("\n".join(notes))
    return 0

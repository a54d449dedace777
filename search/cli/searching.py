"""``run``, ``resume`` and ``plan``: a search from its config, read and checked first (``search.cli.configs``)."""

from __future__ import annotations

import argparse
import json
import sys

from peft_search.reports import load_trials, summary_table
from peft_search.search.loop.driver import packing_note, run_search
from peft_search.search.plan.planning import format_plan, plan_search, resolution_note
from peft_search.search.redact import redact_text
from peft_search.search.results import storage
from peft_search.search.settings.schema import SearchConfig


def run(args: argparse.Namespace, cfg: SearchConfig, resume: bool) -> int:
    """``run`` and ``resume``, with the config ``search.cli.configs.run_config`` read."""
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


def plan(args: argparse.Namespace, cfg: SearchConfig) -> int:
    """``plan``, with the config ``search.cli.configs.plan_config`` read."""
    rows = plan_search(
        cfg, samples=args.samples, num_labels=args.num_labels, seed=cfg.search.seed, jobs=args.jobs
    )
    notes = [resolution_note(cfg.dataset.eval_size)]
    if not rows and not args.samples:
        notes.insert(
            0, "the config has no explicit candidates: --samples N plans N configs sampled from its space"
        )
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

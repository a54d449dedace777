"""``peft-search``: the command line. Start-up stays fast: heavy libraries load only inside commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from search.config import default_config_path, load_config

    overrides = {}
    if args.num_trials is not None:
        overrides["search.num_trials"] = args.num_trials
    if args.results_dir is not None:
        overrides["results_dir"] = args.results_dir
    if args.name is not None:
        overrides["name"] = args.name
    path = Path(args.config) if args.config else default_config_path()
    cfg = load_config(path, overrides)
    from search.driver import run_search

    print(
        f"[peft-search] search {cfg.name!r}: {cfg.search.num_trials} trials of {cfg.model.name_or_path} "
        f"on {cfg.dataset.source}; results in {cfg.search_dir()}",
        flush=True,
    )
    search_dir = run_search(cfg, address=args.address, num_cpus=args.num_cpus)
    from reports import load_trials, summary_table

    trials = load_trials(search_dir)
    print()
    print(summary_table(trials))
    done = trials["status"].eq("complete").sum()
    print(f"\n[peft-search] {done}/{len(trials)} trials complete. Results: {search_dir}")
    print(f"[peft-search]   report: {search_dir / 'report.html'}")
    print(
        f"[peft-search]   trials table: {search_dir / 'trials.parquet'}   Optuna storage: {search_dir / 'optuna.db'}"
    )
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from search.config import load_config
    from search.planning import format_plan, plan_search

    cfg = load_config(args.config)
    rows = plan_search(cfg, samples=args.samples, num_labels=args.num_labels, seed=cfg.search.seed)
    print(json.dumps(rows, indent=2) if args.format == "json" else format_plan(rows))
    return 0


def _best(args: argparse.Namespace) -> int:
    from reports.best import best_command
    from search.config import ConfigError, parse_bytes

    try:
        max_memory = parse_bytes(args.max_memory) if args.max_memory is not None else None
    except ValueError as err:
        raise ConfigError(f"--max-memory: {err}") from None
    choice, text = best_command(
        args.results_dir,
        max_params=args.max_params,
        max_memory=max_memory,
        min_accuracy=args.min_accuracy,
        export_dir=args.export,
    )
    print(text)
    return 0 if choice.trial is not None else 1


def _report(args: argparse.Namespace) -> int:
    from reports.html import write_report

    print(f"[peft-search] report: {write_report(args.results_dir, args.output)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from reports import load_trials, summary_table

    print(summary_table(load_trials(args.results_dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-search",
        description="Multi-objective search over PEFT configurations (method x rank x targets x quantization) on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a search (Ray starts on this machine unless --address is given)")
    run.add_argument(
        "config", nargs="?", help="YAML search config (default: the bundled BBC News / MiniLM search)"
    )
    run.add_argument("--address", help="join a running Ray cluster (e.g. auto or ray://HEAD:10001)")
    run.add_argument("--num-trials", type=int, help="override search.num_trials")
    run.add_argument("--results-dir", help="override results_dir")
    run.add_argument("--name", help="override the search name")
    run.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance (default: all)")
    run.set_defaults(func=_run)
    plan = sub.add_parser(
        "plan",
        help="exact parameter counts, adapter size and a memory estimate per candidate, without weights",
    )
    plan.add_argument("config", help="YAML search config")
    plan.add_argument("--format", choices=["table", "json"], default="table")
    plan.add_argument("--samples", type=int, default=0, help="also plan N configs sampled from the space")
    plan.add_argument(
        "--num-labels", type=int, help="classes of the task head (default: counted in the dataset)"
    )
    plan.set_defaults(func=_plan)
    best = sub.add_parser("best", help="the most accurate trial under a budget; --export writes its adapter")
    best.add_argument("results_dir", help="a search's results directory (RESULTS_DIR/NAME)")
    best.add_argument("--max-params", type=float, help="at most this many trainable parameters")
    best.add_argument("--max-memory", help="at most this peak memory, e.g. 8GB")
    best.add_argument("--min-accuracy", type=float, help="at least this held-out accuracy")
    best.add_argument("--export", help="copy the adapter and a reproducing config into this new directory")
    best.set_defaults(func=_best)
    report = sub.add_parser("report", help="write the self-contained HTML report (also mid-search)")
    report.add_argument("results_dir", help="a search's results directory (RESULTS_DIR/NAME)")
    report.add_argument("-o", "--output", help="where to write it (default: RESULTS_DIR/NAME/report.html)")
    report.set_defaults(func=_report)
    show = sub.add_parser("show", help="print the trials table of a results directory")
    show.add_argument("results_dir")
    show.set_defaults(func=_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"peft-search: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

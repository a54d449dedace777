"""How stable is the pick? The default search's front configs trained with several seeds; ``best`` applied to each
seed's runs with ``--tolerance 0`` and ``--tolerance auto``.

    python -m benchmarks.pick_stability                  # the default search, its whole front, 5 new seeds
    python -m benchmarks.pick_stability --seeds 5 --max-params 100000

One search with ``search.repeats: {top: TOP, seeds: SEEDS}`` trains every front config ``SEEDS + 1`` times (the
search's own seed, then ``seed + 1 .. seed + SEEDS``). For each seed, the runs with that seed make one "world":
the question a user asks of one search, asked ``SEEDS + 1`` times. Each rule picks a config in each world (the
same code as ``peft-search best``, on that world's per-row predictions); the table says how often each rule picks
its most frequent config, how many different configs it picks, and what its picks cost and score, with each pick's
accuracy averaged over all its runs (the best estimate of what shipping it gives).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from typing import Any

import pandas as pd
import yaml

from benchmarks.common import machine, start_ray, table, write_result

RULES = ("0", "auto")


def worlds(trials: pd.DataFrame, correct: dict[str, list[bool]], base_seed: int):
    """Per seed: the runs of the repeated configs with that seed (config key = the original's trial id)."""
    done = trials[trials["status"] == "complete"].copy()
    done["config"] = done["repeat_of"].fillna(done["trial_id"])
    done["run_seed"] = done["seed"].fillna(base_seed).astype(int)
    repeated = set(done.loc[done["repeat_of"].notna(), "repeat_of"])
    done = done[done["config"].isin(repeated)]
    for seed, world in done.groupby("run_seed"):
        rows = world.assign(trial_id=world["config"], repeat_of=None)
        yield int(seed), rows, {c: correct[t] for c, t in zip(rows["config"], world["trial_id"], strict=True)}


def picks(trials, correct, base_seed: int, limits) -> list[dict[str, Any]]:
    from peft_search.reports.choice import choose_best
    from peft_search.search.results.metrics import DEFAULT_OBJECTIVES

    out = []
    for seed, world, world_correct in worlds(trials, correct, base_seed):
        for rule in RULES:
            tolerance = "auto" if rule == "auto" else float(rule)
            choice = choose_best(
                world, DEFAULT_OBJECTIVES, limits, tolerance=tolerance, correct=world_correct
            )
            if choice.trial is None:
                continue
            out.append(
                {
                    "seed": seed,
                    "rule": rule,
                    "pick": choice.trial["trial_id"],
                    "method": choice.trial["method"],
                    "accuracy": float(choice.trial["accuracy"]),
                    "trainable_params": float(choice.trial["trainable_params"]),
                    "tied": len(choice.indistinguishable),
                }
            )
    return out


def summarise(rows: list[dict[str, Any]], mean_accuracy: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for rule in RULES:
        mine = [r for r in rows if r["rule"] == rule]
        if not mine:
            continue
        counts = Counter(r["pick"] for r in mine)
        modal, n_modal = counts.most_common(1)[0]
        out.append(
            {
                "rule": f"--tolerance {rule}",
                "worlds": len(mine),
                "modal_pick": modal,
                "same_pick_share": n_modal / len(mine),
                "distinct_picks": len(counts),
                "mean_pick_accuracy_in_world": sum(r["accuracy"] for r in mine) / len(mine),
                "mean_pick_accuracy_over_seeds": sum(mean_accuracy[r["pick"]] for r in mine) / len(mine),
                "mean_pick_trainable_params": sum(r["trainable_params"] for r in mine) / len(mine),
                "mean_tied": sum(r["tied"] for r in mine) / len(mine),
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from peft_search.cluster import shutdown
    from peft_search.reports.choice import Limit
    from peft_search.search.loop.driver import run_search
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.settings.loading import load_config

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    ours = start_ray(args.config, overrides, args.num_cpus)
    with tempfile.TemporaryDirectory(prefix="pick-stability-") as tmp:
        tmp = args.results_dir or tmp  # --results-dir keeps the search (its report) for a look
        cfg = load_config(
            args.config,
            {
                **overrides,
                "name": "pick-stability",
                "results_dir": tmp,
                "search.repeats": {"top": args.top, "seeds": args.seeds},
            },
        )
        t0 = time.perf_counter()
        results = ResultsDir(run_search(cfg, echo=args.echo))
        wall = time.perf_counter() - t0
        trials, correct = results.read_trials(), results.correct_by_trial()
    if ours:
        shutdown()
    done = trials[trials["status"] == "complete"].copy()
    done["config"] = done["repeat_of"].fillna(done["trial_id"])
    mean_accuracy = done.groupby("config")["accuracy"].mean().to_dict()
    limits = [Limit("trainable_params", "<=", args.max_params)] if args.max_params else []
    rows = picks(trials, correct, cfg.search.seed, limits)
    configs = (
        done[done["config"].isin(set(done["repeat_of"].dropna()))]
        .groupby("config")
        .agg(
            method=("method", "first"),
            quantization=("quantization", "first"),
            runs=("accuracy", "size"),
            mean_accuracy=("accuracy", "mean"),
            sd_accuracy=("accuracy", "std"),
            min_accuracy=("accuracy", "min"),
            max_accuracy=("accuracy", "max"),
            trainable_params=("trainable_params", "first"),
        )
        .reset_index()
        .sort_values("mean_accuracy", ascending=False)
    )
    return {
        "command": "python -m benchmarks.pick_stability " + " ".join(args.argv),
        "machine": machine(),
        "wall_s": wall,
        "trials": len(trials),
        "limits": [str(limit) for limit in limits],
        "configs": configs.to_dict("records"),
        "summary": summarise(rows, mean_accuracy),
        "picks": rows,
    }


def main(argv: list[str] | None = None) -> None:
    import sys

    from peft_search.search.settings.loading import default_config_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument(
        "--seeds", type=int, default=5, help="new seeds per front config (at least 5 for the issue)"
    )
    parser.add_argument(
        "--top", type=int, default=20, help="front configs to repeat, best first (default: all)"
    )
    parser.add_argument("--max-params", type=float, help="a trainable-parameter budget for the picks")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--num-cpus", type=int)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--results-dir", help="keep the search here (default: a temporary directory)")
    parser.add_argument("--out-dir", help="directory for the JSON result (default benchmarks/results)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    result = run(args)
    path = write_result("pick_stability", result, args.out_dir)
    print(
        table(
            result["configs"],
            [
                "config",
                "method",
                "quantization",
                "runs",
                "mean_accuracy",
                "sd_accuracy",
                "min_accuracy",
                "max_accuracy",
                "trainable_params",
            ],
        )
    )
    print()
    print(table(result["summary"], list(result["summary"][0]) if result["summary"] else []))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()

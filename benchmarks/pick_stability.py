"""How stable is the pick? The default search's front configs trained with several seeds; ``best`` applied to each
seed's runs with ``--tolerance 0``, ``--tolerance auto``, and ``auto`` settled by ``search.race``.

    python -m benchmarks.pick_stability                  # the default search, its whole front, 5 new seeds
    python -m benchmarks.pick_stability --seeds 5 --max-params 100000

One search with ``search.repeats: {top: TOP, seeds: SEEDS}`` trains every front config ``SEEDS + 1`` times (the
search's own seed, then ``seed + 1 .. seed + SEEDS``). For each seed, the runs with that seed make one "world":
the question a user asks of one search, asked ``SEEDS + 1`` times. Each rule picks a config in each world (the
same code as ``peft-search best``, on that world's per-row predictions); the table says how often each rule picks
its most frequent config, how many different configs it picks, and what its picks cost and score: each pick's
accuracy over the seeds no rule used to pick it, against the best config's mean over those seeds. The race is
replayed on the runs already trained (``raced``): round ``r`` of a world takes each tied config's run with the
``r``-th next seed, as ``search.race`` would have trained it, and its compute is those runs' training time (each
run at its config's median over its runs, unless ``--times measured``: the machine's load of the moment is not the
config's cost).
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

RULES = ("0", "auto", "auto+race")
RACE = {"alpha": 0.05, "margin": 0.01, "max_rounds": 3, "budget": 0.5}
"""``search.race`` as this benchmark replays it; the rounds leave seeds no rule picked on, to score the picks by."""


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


def raced(
    world: pd.DataFrame,
    runs: pd.DataFrame,
    seed: int,
    tied: tuple[str, ...],
    search_s: float,
    race: dict = RACE,
) -> tuple[str, list[int], float, str]:
    """``search.race`` over the configs ``tied`` in one world, replayed on the runs already trained: round ``r``
    takes each config's run with the ``r``-th seed after the world's own (in a cycle), as a search's race would train
    it. The pick (as ``best``'s: the cheapest config left by trainable parameters, of those within the margin of the
    leader's mean where the race stopped undecided), the seeds it used, the race's training seconds
    and its stop line. ``race``: ``search.race``'s settings, its budget a share of the search's own training time
    (``search_s``)."""
    from peft_search.reports.race import cheapest_first
    from peft_search.search.results.metrics import DEFAULT_OBJECTIVES
    from peft_search.search.results.race import race_state

    seeds = sorted(runs["run_seed"].unique())
    order = seeds[seeds.index(seed) + 1 :] + seeds[: seeds.index(seed)]
    rows = [world.assign(repeat_of=None, seed=None)]
    for r, other in enumerate(order, start=1):
        again = runs[runs["run_seed"].eq(other) & runs["config"].isin(tied)]
        rows.append(
            again.assign(
                trial_id=[f"{c}@{other}" for c in again["config"]], repeat_of=again["config"], seed=r
            )
        )
    table = pd.concat(rows, ignore_index=True)
    own_s = float(
        world["train_time_s"].sum()
    )  # the world's originals: the search's budget is over all its trials
    state = race_state(
        table,
        list(tied),
        base_seed=0,
        cheapest_first=cheapest_first(world, list(tied), DEFAULT_OBJECTIVES),
        **{**race, "budget": race["budget"] * search_s / own_s},
    )
    used = [seed, *order[: state.rounds]]
    pick = cheapest_first(world, list(state.close), DEFAULT_OBJECTIVES)[0]
    return pick, used, state.spent_s, state.detail


def typical_times(trials: pd.DataFrame) -> pd.DataFrame:
    """Each run's training seconds as its config's median over all its runs: what a run of that config costs on
    this machine, not what the machine's load of the moment made it cost (the search's first trials share the
    machine with whatever else ran then; a replayed race can count them as its own runs)."""
    config = trials["repeat_of"].fillna(trials["trial_id"])
    median = trials.groupby(config)["train_time_s"].transform("median")
    return trials.assign(train_time_s=median.where(trials["status"].eq("complete"), trials["train_time_s"]))


def picks(trials, correct, base_seed: int, limits, race: dict = RACE) -> list[dict[str, Any]]:
    from peft_search.reports.choice import choose_best
    from peft_search.search.results.metrics import DEFAULT_OBJECTIVES

    out = []
    done = trials[trials["status"] == "complete"]
    search_s = float(done.loc[done["repeat_of"].isna(), "train_time_s"].sum())
    runs = done.assign(
        config=done["repeat_of"].fillna(done["trial_id"]), run_seed=done["seed"].fillna(base_seed).astype(int)
    )
    for seed, world, world_correct in worlds(trials, correct, base_seed):
        for rule in RULES:
            tolerance = 0.0 if rule == "0" else "auto"
            choice = choose_best(
                world, DEFAULT_OBJECTIVES, limits, tolerance=tolerance, correct=world_correct
            )
            if choice.trial is None:
                continue
            pick, used, spent, why = str(choice.trial["trial_id"]), [seed], 0.0, ""
            if rule == "auto+race" and len(choice.indistinguishable) > 1:
                pick, used, spent, why = raced(world, runs, seed, choice.indistinguishable, search_s, race)
            chosen = world.set_index("trial_id").loc[pick]
            out.append(
                {
                    "seed": seed,
                    "rule": rule,
                    "pick": pick,
                    "method": chosen["method"],
                    "accuracy": float(chosen["accuracy"]),
                    "trainable_params": float(chosen["trainable_params"]),
                    "tied": len(choice.indistinguishable),
                    "seeds_used": used,
                    "race_s": spent,
                    "search_s": search_s,
                    "race": why,
                }
            )
    return out


def summarise(rows: list[dict[str, Any]], accuracy: pd.DataFrame) -> list[dict[str, Any]]:
    """Per rule: how often it picks its most frequent config, and its picks' accuracy over the seeds it did not
    pick on (``accuracy``: config x seed) against the best config's mean over those same seeds, and the compute."""
    out = []
    for rule in RULES:
        mine = [r for r in rows if r["rule"] == rule]
        if not mine:
            continue
        counts = Counter(r["pick"] for r in mine)
        modal, n_modal = counts.most_common(1)[0]
        unseen = [accuracy.drop(columns=r["seeds_used"]) for r in mine]
        out.append(
            {
                "rule": f"--tolerance {rule}" if rule != "auto+race" else "--tolerance auto, search.race",
                "worlds": len(mine),
                "modal_pick": modal,
                "same_pick_share": n_modal / len(mine),
                "distinct_picks": len(counts),
                "mean_pick_accuracy_in_world": sum(r["accuracy"] for r in mine) / len(mine),
                "pick_accuracy_on_unused_seeds": sum(
                    u.loc[r["pick"]].mean() for r, u in zip(mine, unseen, strict=True)
                )
                / len(mine),
                "best_config_on_unused_seeds": sum(u.mean(axis=1).max() for u in unseen) / len(mine),
                "mean_pick_trainable_params": sum(r["trainable_params"] for r in mine) / len(mine),
                "mean_tied": sum(r["tied"] for r in mine) / len(mine),
                "compute_vs_search": sum((r["search_s"] + r["race_s"]) / r["search_s"] for r in mine)
                / len(mine),
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from peft_search.cluster import shutdown
    from peft_search.reports.choice import Limit
    from peft_search.search.loop.driver import run_search
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.settings.loading import load_config

    race = {**RACE, "budget": args.race_budget, "max_rounds": args.race_rounds}
    if args.from_results:  # the rules again on a search kept with --results-dir: nothing trains
        results = ResultsDir(args.from_results)
        base_seed = int((results.read_config().get("search") or {}).get("seed") or 0)
        trials, correct = results.read_trials(), results.correct_by_trial()
        wall = float(results.read_facts().get("wall_time_s") or 0.0)
    else:
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
        base_seed = cfg.search.seed
        if ours:
            shutdown()
    if args.times == "median":
        trials = typical_times(trials)
    if args.times == "median":
        trials = typical_times(trials)
    done = trials[trials["status"] == "complete"].copy()
    done["config"] = done["repeat_of"].fillna(done["trial_id"])
    done["run_seed"] = done["seed"].fillna(base_seed).astype(int)
    repeated = done[done["config"].isin(set(done["repeat_of"].dropna()))]
    accuracy = repeated.pivot_table(index="config", columns="run_seed", values="accuracy")
    limits = [Limit("trainable_params", "<=", args.max_params)] if args.max_params else []
    rows = picks(trials, correct, base_seed, limits, race)
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
        "race": race,
        "times": args.times,
        "configs": configs.to_dict("records"),
        "summary": summarise(rows, accuracy),
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
    parser.add_argument(
        "--from-results",
        help="replay the rules on a search kept with --results-dir (RESULTS_DIR/pick-stability)",
    )
    parser.add_argument(
        "--race-budget", type=float, default=RACE["budget"], help="search.race's budget (share of the search)"
    )
    parser.add_argument(
        "--race-rounds", type=int, default=RACE["max_rounds"], help="search.race's max_rounds"
    )
    parser.add_argument(
        "--times",
        choices=("median", "measured"),
        default="median",
        help="compute: each run at its config's median training time (default) or as measured",
    )
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

"""Early stopping, measured: the same searches with and without ``search.early_stopping: asha``, side by side.

    python -m benchmarks.early_stopping                          # the default search, 18 trials, seeds 0 and 1
    python -m benchmarks.early_stopping --trials 30 --seeds 3 --set search.early_stopping.grace_steps=5

For each seed, one search without early stopping and one with it (same config, seed and sampler; the explicit
candidates and TPE's random start-up trials are the same configs in both). Reported per search: wall time, the
compute its trials spent (training + final evaluation + rung evaluations, summed over trials), how many were stopped
and the training steps they did not run, and the hypervolume of the front of complete trials. Every search is scored
against one reference point (``benchmarks.search_efficiency.score``), so the hypervolumes compare directly.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import yaml

from benchmarks.common import machine, start_ray, table, write_result
from benchmarks.search_efficiency import score

RULES = ("none", "asha")


def compute_spent(trials) -> dict[str, float]:
    """Seconds the trials themselves spent, from the trials table (stopped trials: up to their rung)."""
    import pandas as pd

    ran = trials[trials["status"].isin(["complete", "stopped_early"])]

    def total(column: str) -> float:
        return (
            float(pd.to_numeric(ran.get(column), errors="coerce").fillna(0).sum()) if column in ran else 0.0
        )

    train, final_eval, rung_eval = total("train_time_s"), total("eval_time_s"), total("rung_eval_time_s")
    return {
        "train_s": train,
        "final_eval_s": final_eval,
        "rung_eval_s": rung_eval,
        "compute_s": train + final_eval + rung_eval,
    }


def summarise(trials, steps: int) -> dict[str, Any]:
    """One search's trials table, summarised: what ran, what early stopping saved, the front's points."""
    import pandas as pd

    done = trials[trials["status"] == "complete"]
    stopped = trials[trials["status"] == "stopped_early"]
    saved_steps = float((steps - stopped["stopped_at_step"].astype(float)).sum()) if len(stopped) else 0.0
    return {
        "trials": len(trials),
        "complete": len(done),
        "stopped": len(stopped),
        "steps_saved": saved_steps,
        "steps_trained": float(pd.to_numeric(trials.get("train_steps"), errors="coerce").fillna(0).sum()),
        **compute_spent(trials),
        "points": [
            (float(r.accuracy), float(r.trainable_params), float(r.peak_memory_bytes))
            for r in done.itertuples()
        ],
        "stopped_trials": [
            {
                "method": r.method,
                "quantization": r.quantization,
                "step": int(r.stopped_at_step),
                "rung_accuracy": float(r.accuracy),
                "trainable_params": int(r.trainable_params),
            }
            for r in stopped.itertuples()
        ],
        "best_accuracy": float(done["accuracy"].max()) if len(done) else None,
        "cpu_allocators": sorted(set(trials.get("cpu_allocator", pd.Series(dtype=object)).dropna())),
    }


def _key(row) -> str:
    return f"{row['peft_config']}|{row['quantization']}|{float(row['learning_rate']):.12g}"


def judge_stops(stopped_run, plain_run) -> list[dict[str, Any]]:
    """Each trial early stopping stopped, next to the same config trained to the end in the search without it.

    The explicit candidates and TPE's random start-up trials are the same configs in both searches of a seed, so
    for those this says what stopping cost: the accuracy the config would have reached, and whether it would have
    been on that search's front.
    """
    from peft_search.reports.fronts import pareto_front

    front = {_key(r) for _, r in pareto_front(plain_run).iterrows()}
    plain = {_key(r): r for _, r in plain_run[plain_run["status"] == "complete"].iterrows()}
    out = []
    for _, r in stopped_run[stopped_run["status"] == "stopped_early"].iterrows():
        twin = plain.get(_key(r))
        out.append(
            {
                "method": r["method"],
                "quantization": r["quantization"],
                "stopped_at_step": int(r["stopped_at_step"]),
                "rung_accuracy": float(r["accuracy"]),
                "trainable_params": int(r["trainable_params"]),
                "final_accuracy_unstopped": None if twin is None else float(twin["accuracy"]),
                "on_front_unstopped": None if twin is None else _key(r) in front,
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from peft_search.cluster import shutdown
    from peft_search.search.loop.driver import run_search
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.settings.loading import load_config

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    ours = start_ray(args.config, overrides, args.num_cpus)
    runs, stops = [], []
    with tempfile.TemporaryDirectory(prefix="early-stopping-") as tmp:
        for seed in range(args.seeds):
            tables = {}
            for rule in RULES:
                sets = (
                    {**overrides, "search.early_stopping.rule": rule} if rule != "none" else dict(overrides)
                )
                if rule == "none":  # the other settings of early_stopping do not apply without it
                    sets = {k: v for k, v in sets.items() if not k.startswith("search.early_stopping")}
                cfg = load_config(
                    args.config,
                    {
                        **sets,
                        "name": f"es-{rule}-{seed}",
                        "results_dir": tmp,
                        "search.seed": seed,
                        "search.num_trials": args.trials,
                    },
                )
                t0 = time.perf_counter()
                results = ResultsDir(run_search(cfg, echo=args.echo))
                wall = time.perf_counter() - t0
                steps = int(results.read_config()["training"]["max_steps"])
                tables[rule] = results.read_trials()
                runs.append(
                    {
                        "rule": rule,
                        "sampler": rule,
                        "seed": seed,
                        "wall_s": wall,
                        **summarise(tables[rule], steps),
                    }
                )
            stops += [{"seed": seed, **s} for s in judge_stops(tables["asha"], tables["none"])]
    if ours:
        shutdown()
    summary, reference = score(runs)  # groups by "sampler", here the rule
    by_rule = {s["sampler"]: s for s in summary}
    rows = []
    for rule in RULES:
        mine = [r for r in runs if r["rule"] == rule]
        rows.append(
            {
                "early_stopping": rule,
                "searches": len(mine),
                "mean_wall_s": statistics.fmean(r["wall_s"] for r in mine),
                "mean_compute_s": statistics.fmean(r["compute_s"] for r in mine),
                "mean_stopped": statistics.fmean(r["stopped"] for r in mine),
                "mean_steps_saved": statistics.fmean(r["steps_saved"] for r in mine),
                "mean_hv": by_rule[rule]["mean_hv"],
                "stdev_hv": by_rule[rule]["stdev_hv"],
                "mean_best_accuracy": statistics.fmean(r["best_accuracy"] or 0.0 for r in mine),
            }
        )
    base, es = rows
    return {
        "benchmark": "early_stopping",
        "config": str(args.config),
        "overrides": overrides,
        "trials": args.trials,
        "seeds": args.seeds,
        "machine": machine(),
        "reference": reference,
        "rows": rows,
        "compute_saved_fraction": 1 - es["mean_compute_s"] / base["mean_compute_s"],
        "wall_saved_fraction": 1 - es["mean_wall_s"] / base["mean_wall_s"],
        "hv_ratio": es["mean_hv"] / base["mean_hv"] if base["mean_hv"] else None,
        "stopped_vs_unstopped": stops,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from peft_search.search.settings.loading import default_config_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument("--trials", type=int, default=18, help="trials per search")
    parser.add_argument("--seeds", type=int, default=2, help="pairs of searches (seeds 0..N-1)")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (dotted keys)")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--echo", action="store_true", help="print trials as they start and finish")
    args = parser.parse_args(argv)
    result = run(args)
    path = write_result("early_stopping", result, args.out_dir)
    cols = [
        "early_stopping",
        "searches",
        "mean_wall_s",
        "mean_compute_s",
        "mean_stopped",
        "mean_steps_saved",
        "mean_hv",
        "stdev_hv",
        "mean_best_accuracy",
    ]
    print(table(result["rows"], cols))
    if result["stopped_vs_unstopped"]:
        print("stopped trials, and the same config trained to the end without early stopping:")
        print(
            table(
                result["stopped_vs_unstopped"],
                [
                    "seed",
                    "method",
                    "quantization",
                    "stopped_at_step",
                    "rung_accuracy",
                    "trainable_params",
                    "final_accuracy_unstopped",
                    "on_front_unstopped",
                ],
            )
        )
    print(
        f"compute saved {result['compute_saved_fraction']:.1%}, wall saved {result['wall_saved_fraction']:.1%}, "
        f"hypervolume ratio {result['hv_ratio']:.3f}; written to {path}"
    )
    return result


if __name__ == "__main__":
    main()

"""How good a front each sampler finds in N trials: hypervolume, TPE (the default) against random search.

    python -m benchmarks.search_efficiency                           # synthetic, 20 seeds x 30 trials, both samplers
    python -m benchmarks.search_efficiency --seeds 5 --trials 40
    python -m benchmarks.search_efficiency --bbc --bbc-seeds 2       # also the real default search (slow: minutes)

Synthetic: the project's real define-by-run space (``spaces.sampling.DefineByRun``, the default config's methods,
quantization levels and candidates) sampled by pure Optuna; a config's trainable parameters and peak memory are
``peft-search plan``'s exact counts and estimate on the meta-device model (no weights), and its accuracy is a
smooth made-up function of method, learning rate, capacity and quantization plus seeded noise. Infeasible configs
complete with the worst outcome, as in a real search. Every run of both samplers is scored against one reference
point (accuracy 0, 1.1 x the worst cost seen), with ``search.results.pareto.hypervolume``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import yaml

from benchmarks.common import machine, start_ray, table, write_result

SAMPLERS = ("tpe", "random")
_BASE_ACCURACY = {"lora": 0.90, "adalora": 0.89, "loha": 0.88, "lokr": 0.87, "vera": 0.82, "ia3": 0.83}
_QUANT_PENALTY = {"none": 0.0, "int8": 0.01, "nf4": 0.02, "fp4": 0.03}


def synthetic_accuracy(config: dict[str, Any], trainable: int, noise: float) -> float:
    """Made up but shaped like the real thing: a best learning rate, more capacity helps with diminishing returns."""
    base = _BASE_ACCURACY.get(config["method"], 0.75)
    lr_term = -0.08 * (math.log10(config["learning_rate"]) - math.log10(2e-3)) ** 2
    capacity = 0.015 * math.log10(1 + trainable / 1e3)
    return float(
        min(1.0, max(0.0, base + lr_term + capacity - _QUANT_PENALTY[config["quantization"]] + noise))
    )


class SyntheticObjective:
    """Scores a sampled config: (accuracy, trainable params, estimated peak memory); cached per config."""

    def __init__(self, cfg, prep):
        from peft_search.search.inputs.modeling import meta_model

        self.cfg = cfg
        self.base = meta_model(prep.settings.model_path, cfg.model.task, max(prep.data.num_labels, 2))
        self.cache: dict[str, tuple[int, int] | None] = {}

    def cost(self, config: dict[str, Any]) -> tuple[int, int] | None:
        from peft_search.search.errors import InfeasibleTrialError
        from peft_search.search.plan.planning import plan_candidate

        key = json.dumps([config["peft_config"], config["quantization"]], sort_keys=True)
        if key not in self.cache:
            t = self.cfg.training
            try:
                plan = plan_candidate(
                    self.base,
                    config["peft_config"],
                    quantization=config["quantization"],
                    batch_size=t.batch_size,
                    seq_len=t.max_seq_length,
                )
                self.cache[key] = (int(plan.trainable_params), int(plan.est_peak_memory_bytes))
            except InfeasibleTrialError:
                self.cache[key] = None
        return self.cache[key]


def run_synthetic(cfg, prep, samplers, seeds: int, trials: int) -> list[dict[str, Any]]:
    """Every (sampler, seed) study; returns its trials' (accuracy, params, memory) points, None when infeasible."""
    import optuna

    from peft_search import spaces
    from peft_search.search.loop.tuning import make_sampler
    from peft_search.search.results.metrics import WORST_COST

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = SyntheticObjective(cfg, prep)
    space = spaces.DefineByRun(prep.space_spec, prep.space_context)
    runs = []
    for name in samplers:
        for seed in range(seeds):
            t0 = time.perf_counter()
            study = optuna.create_study(
                sampler=make_sampler(name, seed, trials, cfg.search.n_startup_trials),
                directions=["maximize", "minimize", "minimize"],
            )
            spaces.enqueue_candidates(study, prep.space_spec)
            noise = random.Random(seed)
            points = []
            for _ in range(trials):
                trial = study.ask()
                config = space(trial)
                cost = objective.cost(config)
                if cost is None:
                    study.tell(trial, [0.0, WORST_COST, WORST_COST])
                    points.append(None)
                    continue
                acc = synthetic_accuracy(config, cost[0], noise.gauss(0, 0.01))
                study.tell(trial, [acc, cost[0], cost[1]])
                points.append((acc, cost[0], cost[1]))
            runs.append(
                {"sampler": name, "seed": seed, "points": points, "seconds": time.perf_counter() - t0}
            )
    return runs


def run_bbc(args, samplers) -> list[dict[str, Any]]:
    """The real default search (BBC News, MiniLM) with each sampler and seed; points from its trials table."""
    from peft_search.cluster import shutdown
    from peft_search.search.loop.driver import run_search
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.settings.loading import load_config

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    ours = start_ray(args.config, overrides, args.num_cpus)
    runs = []
    with tempfile.TemporaryDirectory(prefix="efficiency-") as tmp:
        for name in samplers:
            for seed in range(args.bbc_seeds):
                cfg = load_config(
                    args.config,
                    {
                        **overrides,
                        "name": f"efficiency-{name}-{seed}",
                        "results_dir": tmp,
                        "search.sampler": name,
                        "search.seed": seed,
                        "search.num_trials": args.bbc_trials,
                    },
                )
                t0 = time.perf_counter()
                search_dir = run_search(cfg, echo=False)
                trials = ResultsDir(search_dir).read_trials()
                done = trials[trials["status"] == "complete"]
                points = [
                    (float(r.accuracy), float(r.trainable_params), float(r.peak_memory_bytes))
                    for r in done.itertuples()
                ]
                runs.append(
                    {"sampler": name, "seed": seed, "points": points, "seconds": time.perf_counter() - t0}
                )
    if ours:
        shutdown()
    return runs


def score(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float]]:
    """Hypervolume of each run's front against one reference point shared by all runs, summarised per sampler."""
    from peft_search.search.results.pareto import hypervolume

    feasible = [p for r in runs for p in r["points"] if p is not None]
    if not feasible:
        return [], []
    worst = np.array(feasible).max(axis=0)
    reference = [0.0, float(worst[1]) * 1.1, float(worst[2]) * 1.1]
    for r in runs:
        pts = np.array([[-a, p, m] for a, p, m in (x for x in r["points"] if x is not None)]).reshape(-1, 3)
        r["hypervolume"] = hypervolume(pts, np.array(reference))
        r["infeasible"] = sum(x is None for x in r["points"])
    # Normalised by the box between the reference and the ideal point, so 1.0 would be a single perfect config.
    box = 1.0 * reference[1] * reference[2]
    summary = []
    for name in dict.fromkeys(r["sampler"] for r in runs):
        hv = [r["hypervolume"] / box for r in runs if r["sampler"] == name]
        summary.append(
            {
                "sampler": name,
                "runs": len(hv),
                "mean_hv": statistics.fmean(hv),
                "stdev_hv": statistics.stdev(hv) if len(hv) > 1 else 0.0,
                "mean_infeasible": statistics.fmean(r["infeasible"] for r in runs if r["sampler"] == name),
            }
        )
    return summary, reference


def run(args: argparse.Namespace) -> dict[str, Any]:
    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.loading import load_config

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = load_config(args.config, overrides)
    prep = prepare(cfg)
    synthetic = run_synthetic(cfg, prep, SAMPLERS, args.seeds, args.trials)
    summary, reference = score(synthetic)
    result: dict[str, Any] = {
        "benchmark": "search_efficiency",
        "config": str(args.config),
        "overrides": overrides,
        "machine": machine(),
        "synthetic": {
            "trials": args.trials,
            "seeds": args.seeds,
            "reference": reference,
            "summary": summary,
            "runs": [{k: v for k, v in r.items() if k != "points"} for r in synthetic],
        },
    }
    if args.bbc:
        real = run_bbc(args, SAMPLERS)
        bbc_summary, bbc_reference = score(real)
        result["bbc"] = {
            "trials": args.bbc_trials,
            "seeds": args.bbc_seeds,
            "reference": bbc_reference,
            "summary": bbc_summary,
            "runs": real,
        }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from peft_search.search.settings.loading import default_config_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument("--trials", type=int, default=30, help="trials per synthetic study")
    parser.add_argument("--seeds", type=int, default=20, help="synthetic studies per sampler")
    parser.add_argument(
        "--bbc", action="store_true", help="also run the real default search per sampler and seed"
    )
    parser.add_argument("--bbc-trials", type=int, default=9)
    parser.add_argument("--bbc-seeds", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (dotted keys)")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    result = run(args)
    path = write_result("search_efficiency", result, args.out_dir)
    cols = ["sampler", "runs", "mean_hv", "stdev_hv", "mean_infeasible"]
    print(f"synthetic, {args.trials} trials x {args.seeds} seeds (normalised hypervolume):")
    print(table(result["synthetic"]["summary"], cols))
    if "bbc" in result:
        print(f"BBC News, {args.bbc_trials} trials x {args.bbc_seeds} seeds:")
        print(table(result["bbc"]["summary"], cols))
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()

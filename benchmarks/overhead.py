"""Per-trial overhead of a real search: its wall time against the trials' own training and evaluation time.

    python -m benchmarks.overhead                       # the default search (MiniLM on BBC News), 9 x 30 steps
    python -m benchmarks.overhead --long-steps 180      # also ~2-minute trials
    python -m benchmarks.overhead --short-steps 0 --long-steps 180 --trials 5   # only those
    python -m benchmarks.overhead --set search.num_trials=4 --set model.name_or_path=/path/to/model

``useful`` is the sum of every trial's train + eval time divided by the concurrency; everything else is overhead:
preparing the data, starting Tune and its actors, loading the model and injecting the adapter, planning, saving
the adapter, the gaps between trials and writing the report. The breakdown comes from the timestamps each trial
reports (``trial_started_at``, ``trial_total_s``, ``load_time_s``, ``save_time_s``; Tune's ``result.json`` keeps
them). Ray itself is started once, before the searches, and timed on its own.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from benchmarks.common import machine, start_ray, table, write_result

if TYPE_CHECKING:
    from peft_search.search.results.layout import ResultsDir


def _last_results(results: ResultsDir) -> list[dict[str, Any]]:
    last = []
    for path in sorted(results.tune_path.glob("trial-*/result.json")):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if lines:
            last.append(json.loads(lines[-1]))
    return last


def breakdown(search_dir: Path, started: float, ended: float, concurrency: int) -> dict[str, Any]:
    """Where the wall time of one finished search went, from its trials' own timestamps."""
    from peft_search.search.results.layout import ResultsDir

    results_dir = ResultsDir(search_dir)
    trials = results_dir.read_trials()
    done = trials[trials["status"] == "complete"]
    results = [r for r in _last_results(results_dir) if "train_time_s" in r]
    wall = ended - started
    useful = float((done["train_time_s"] + done["eval_time_s"]).sum()) / concurrency
    n = len(trials)
    timed = [r for r in results if "trial_started_at" in r]
    out: dict[str, Any] = {
        "trials": n,
        "complete": len(done),
        "concurrency": concurrency,
        "wall_s": wall,
        "useful_s": useful,
        "overhead_s": wall - useful,
        "overhead_fraction": (wall - useful) / wall if wall > 0 else 0.0,
        "overhead_per_trial_s": (wall - useful) * concurrency / max(n, 1),
        "mean_train_s": float(done["train_time_s"].mean()),
        "mean_eval_s": float(done["eval_time_s"].mean()),
        "mean_load_s": float(done["load_time_s"].mean()),
        "actor_processes": len({r.get("worker_pid") for r in timed}) or None,
    }
    if timed:
        starts = sorted(r["trial_started_at"] for r in timed)
        ends = sorted(r["trial_started_at"] + r["trial_total_s"] for r in timed)
        inside = [
            r["trial_total_s"] - r["load_time_s"] - r["train_time_s"] - r["eval_time_s"] - r["save_time_s"]
            for r in timed
        ]
        busy = sum(r["trial_total_s"] for r in timed) / concurrency
        out.update(
            {
                "until_first_trial_s": starts[0] - started,
                "after_last_trial_s": ended - ends[-1],
                "mean_setup_in_trial_s": sum(inside) / len(inside),
                "mean_save_s": sum(r["save_time_s"] for r in timed) / len(timed),
                # Time no trial was running, other than before the first and after the last: Tune's scheduling,
                # new actors, results callbacks.
                "between_trials_s": max(0.0, wall - busy - (starts[0] - started) - (ended - ends[-1])),
            }
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from peft_search.cluster import shutdown
    from peft_search.search.loop.driver import run_search
    from peft_search.search.loop.prepare import prepare
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.settings.loading import load_config

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.perf_counter()
    ours = start_ray(args.config, overrides, args.num_cpus)
    ray_start_s = time.perf_counter() - t0
    sizes = [("short", args.short_steps)] if args.short_steps else []
    sizes += [("long", args.long_steps)] if args.long_steps else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        for label, steps in sizes:
            cfg = load_config(
                args.config,
                {
                    **overrides,
                    "name": f"overhead-{label}",
                    "results_dir": tmp,
                    "training.max_steps": steps,
                    **({"search.num_trials": args.trials} if args.trials else {}),
                },
            )
            t = time.perf_counter()
            prepare(cfg)  # timed apart; the search prepares again
            prepare_s = time.perf_counter() - t
            started = time.time()
            search_dir = run_search(cfg, echo=args.echo)
            ended = time.time()
            row = {"size": label, "max_steps": steps, "prepare_s": prepare_s}
            # The concurrency the search itself planned, from its run facts.
            concurrency = ResultsDir(search_dir).read_facts()["concurrency"]
            row.update(breakdown(Path(search_dir), started, ended, concurrency))
            rows.append(row)
    if ours:
        shutdown()
    return {
        "benchmark": "overhead",
        "config": str(args.config),
        "overrides": overrides,
        "ray_start_s": ray_start_s,
        "machine": machine(),
        "sizes": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from peft_search.search.settings.loading import default_config_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per search (the config's when unset)"
    )
    parser.add_argument(
        "--short-steps", type=int, default=30, help="training steps of the short trials (0: skip)"
    )
    parser.add_argument(
        "--long-steps", type=int, default=0, help="training steps of the long trials (0: skip)"
    )
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (dotted keys)")
    parser.add_argument("--out-dir", default=None, help="where the JSON goes (benchmarks/results by default)")
    parser.add_argument("--echo", action="store_true", help="print trials as they start and finish")
    args = parser.parse_args(argv)
    result = run(args)
    path = write_result("overhead", result, args.out_dir)
    print(
        table(
            result["sizes"],
            [
                "size",
                "trials",
                "wall_s",
                "useful_s",
                "overhead_fraction",
                "overhead_per_trial_s",
                "mean_load_s",
                "mean_setup_in_trial_s",
                "mean_save_s",
                "between_trials_s",
                "until_first_trial_s",
                "after_last_trial_s",
            ],
        )
    )
    print(f"ray start {result['ray_start_s']:.1f}s; written to {path}")
    return result


if __name__ == "__main__":
    main()

"""CPU trials under each heap allocator: training and held-out scoring time, peak resident memory against the plan.

Each arm is a fresh process (the allocator is chosen at process start, as a search's workers get it: ``LD_PRELOAD``
and jemalloc's own ``MALLOC_CONF``) that trains and scores the same trials with the search's trial code
(``search.worker.training.run_trial``); arms alternate round by round, so a slower spell of the machine falls on
all of them.

    python -m benchmarks.allocator --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import machine, table, write_result

NO_DECAY = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
ARMS: dict[str, tuple[str, str | None]] = {
    "system": ("system", None),
    "jemalloc": ("jemalloc", None),
    "jemalloc, no decay": ("jemalloc", NO_DECAY),
}
"""The allocators compared, as ``resources.cpu_allocator`` and ``MALLOC_CONF``: glibc's; jemalloc as ``auto``
preloads it; jemalloc keeping freed pages (``MALLOC_CONF`` where the search starts, which reaches its workers)."""
LORA = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8, "lora_alpha": 16}
TRIALS = [
    ("lora all-linear", {**LORA, "target_modules": "all-linear"}, "none"),
    ("lora query/value", {**LORA, "target_modules": ["query", "value"]}, "none"),
    ("qlora query/value", {**LORA, "target_modules": ["query", "value"]}, "nf4"),
]
ROOT = Path(__file__).resolve().parents[1]
KEYS = ("train_time_s", "eval_time_s", "peak_memory_bytes", "est_peak_memory_bytes", "accuracy")


def child(args: argparse.Namespace) -> dict[str, Any]:
    """This process's arm: every trial trained and scored in turn, freed memory handed back between them."""
    import torch
    import yaml

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.loading import load_config
    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.environment import heap_allocator, quiet_libraries, return_freed_memory
    from peft_search.search.worker.training import run_trial

    quiet_libraries()
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    overrides["training.max_steps"] = args.steps
    prep = prepare(load_config(args.config, overrides))
    rows = []
    for name, peft_config, quantization in TRIALS[: args.trials]:
        trial = TrialConfig.from_mapping(
            {
                "method": "lora",
                "quantization": quantization,
                "peft_config": peft_config,
                "learning_rate": 2e-3,
            }
        )
        metrics, adapter_dir = run_trial(trial, prep.settings, prep.data, device=torch.device("cpu"))
        rows.append({"trial": name, **{k: metrics[k] for k in KEYS}})
        adapter_dir.cleanup()
        return_freed_memory()
    return {"allocator": heap_allocator(), "malloc_conf": os.environ.get("MALLOC_CONF", ""), "trials": rows}


def _env(choice: str, malloc_conf: str | None) -> dict[str, str]:
    """This environment with the arm's allocator in place of whatever it had."""
    from peft_search.cluster import allocator_preload

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    preload = allocator_preload(choice)
    if preload:
        env["LD_PRELOAD"] = preload
    if malloc_conf:
        env["MALLOC_CONF"] = malloc_conf
    return env


def _child_argv(args: argparse.Namespace) -> list[str]:
    sets = [arg for s in args.set for arg in ("--set", s)]
    options = ["--config", args.config, "--steps", str(args.steps), "--trials", str(args.trials)]
    return ["--child", *options, "--threads", str(args.threads), *sets]


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm, (choice, malloc_conf) in ARMS.items():
            cmd = [sys.executable, "-m", "benchmarks.allocator", *_child_argv(args)]
            env = _env(choice, malloc_conf)
            done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if result["allocator"] != choice:
                raise RuntimeError(f"arm {arm!r} ran on {result['allocator']}")
            runs[arm].append(result)
    rows = []
    for arm, results in runs.items():
        for i, (name, _, _) in enumerate(TRIALS[: args.trials]):
            got = [r["trials"][i] for r in results]
            rows.append(
                {
                    "arm": arm,
                    "trial": name,
                    "train_s": statistics.median(g["train_time_s"] for g in got),
                    "eval_s": statistics.median(g["eval_time_s"] for g in got),
                    "peak_over_estimate": statistics.median(
                        g["peak_memory_bytes"] / g["est_peak_memory_bytes"] - 1 for g in got
                    ),
                    "accuracy": got[0]["accuracy"],
                }
            )
    return {"benchmark": "allocator", "rounds": args.rounds, "machine": machine(), "rows": rows, "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from peft_search.search.settings.loading import default_config_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(default_config_path()))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--trials", type=int, default=len(TRIALS), help="the first N of TRIALS")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the trial's cpus_per_worker)")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (dotted keys)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args)
        print(json.dumps(result, default=float))
        return result
    result = run(args)
    path = write_result("allocator", result, args.out_dir)
    print(table(result["rows"], ["arm", "trial", "train_s", "eval_s", "peak_over_estimate", "accuracy"]))
    print(f"medians of {args.rounds} rounds; written to {path}")
    return result


if __name__ == "__main__":
    main()

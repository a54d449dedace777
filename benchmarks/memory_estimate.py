"""Estimated against measured peak memory, per candidate, each trained in a fresh process (as a worker is).

    python -m benchmarks.memory_estimate                       # the default search's candidates + samples
    python -m benchmarks.memory_estimate --samples 0 --env MALLOC_MMAP_THRESHOLD_=131072

Writes benchmarks/results/memory_estimate.json and prints a table. On CPU the measurement is the worker's peak
resident set (``cpu_rss``); on a GPU, the allocator's peak (``gpu_allocated``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _one(job: Path) -> None:
    """Child process: train one candidate with the search's own trial code and print its metrics as JSON."""
    import torch

    from peft_search.search.worker.environment import quiet_libraries
    from peft_search.search.worker.training import run_trial

    settings, data, trial = pickle.loads(job.read_bytes())
    quiet_libraries()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metrics, adapter_dir = run_trial(trial, settings, data, device=device)
    if adapter_dir is not None:
        adapter_dir.cleanup()
    print("RESULT " + json.dumps(metrics))


def measure(cfg, *, samples: int = 0, env: dict[str, str] | None = None) -> list[dict]:
    """Train the config's candidates (and ``samples`` configs sampled from its space), each in a fresh process with
    the search's own trial code; one row per trial: measured and estimated peak memory, and the trial's speed."""
    import optuna

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.trial import TrialConfig
    from peft_search.spaces.sampling import DefineByRun, SpaceSpec

    prep = prepare(cfg)
    settings = prep.settings
    trials = [
        TrialConfig(
            method=c.name,  # the candidate's own name labels its row
            quantization=c.quantization,
            peft_config=dict(c.peft_config),
            learning_rate=c.learning_rate or cfg.training.learning_rate[0],
            candidate=c.name,
        )
        for c in prep.space_spec.candidates
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.search.seed))
    spec = prep.space_spec
    space = DefineByRun(SpaceSpec(spec.methods, spec.quantization, spec.learning_rate), prep.space_context)
    trials += [TrialConfig.from_mapping(space(study.ask())) for _ in range(samples)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, trial in enumerate(trials):
            job = Path(tmp) / f"job{i}.pkl"
            job.write_bytes(pickle.dumps((settings, prep.data, trial)))
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.memory_estimate", "--_one", str(job)],
                env=env,
                capture_output=True,
                text=True,
            )
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                rows.append(
                    {
                        "method": trial.method,
                        "quantization": trial.quantization,
                        "error": out.stderr[-300:],
                    }
                )
                print(f"{trial.method:<26}{trial.quantization:<6} failed: {out.stderr[-300:]}", flush=True)
                continue
            m = json.loads(line[7:])
            rows.append(
                {
                    "method": trial.method,
                    "quantization": trial.quantization,
                    "peft_config": trial.peft_config,
                    "measured_bytes": m["peak_memory_bytes"],
                    "estimated_bytes": m["est_peak_memory_bytes"],
                    "kind": m["peak_memory_kind"],
                    "error_pct": 100 * (m["est_peak_memory_bytes"] / m["peak_memory_bytes"] - 1),
                    "train_time_s": m["train_time_s"],
                    "train_steps": m["train_steps"],
                    "samples_per_s": m["samples_per_s"],
                    "tokens_per_s": m["tokens_per_s"],
                    "trainable_params": m["trainable_params"],
                    "total_params": m["total_params"],
                    "device": m["device"],
                }
            )
            r = rows[-1]
            print(
                f"{r['method']:<26}{r['quantization']:<6} measured {r['measured_bytes'] / 2**20:8.1f} MiB  "
                f"estimated {r['estimated_bytes'] / 2**20:8.1f} MiB  error {r['error_pct']:+6.1f}%  "
                f"train {r['train_time_s']:.1f}s  {r['tokens_per_s']:,.0f} tokens/s",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="search config (default: the bundled BBC News search)")
    parser.add_argument(
        "--samples", type=int, default=4, help="configs sampled from the space besides candidates"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the trial processes")
    parser.add_argument("--out", default=str(RESULTS / "memory_estimate.json"))
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        _one(Path(args._one))
        return 0

    from peft_search.cluster import allocator_preload
    from peft_search.search.settings.loading import default_config_path, load_config

    cfg = load_config(args.config or default_config_path())
    # As a search's workers would run: with the allocator the config asks for (unless --env says otherwise).
    preload = allocator_preload(cfg.resources.cpu_allocator) if cfg.resources.gpus_per_worker == 0 else None
    env = {
        **os.environ,
        **({"LD_PRELOAD": preload} if preload else {}),
        **dict(e.split("=", 1) for e in args.env),
    }
    rows = measure(cfg, samples=args.samples, env=env)
    errors = [abs(r["error_pct"]) for r in rows if "error_pct" in r]
    summary = {
        "command": " ".join(
            ["python -m benchmarks.memory_estimate", *(argv if argv is not None else sys.argv[1:])]
        ),
        "env": args.env,
        "rows": rows,
        "mean_abs_error_pct": sum(errors) / len(errors) if errors else None,
        "max_abs_error_pct": max(errors) if errors else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(
        f"mean |error| {summary['mean_abs_error_pct']:.1f}%, max {summary['max_abs_error_pct']:.1f}%  -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

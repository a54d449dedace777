"""``peft-search run`` against the search a user would write without it: ``Trainer.hyperparameter_search``.

    python -m benchmarks.peer                      # 9 LoRA configs (r 4/8/16 x 3 target sets), 30 steps each
    python -m benchmarks.peer --ranks 4 8 16 32    # 12 configs
    python -m benchmarks.peer --rslora --packing off 4 --repeats 1   # 18 LoRA-family configs; ours alone and packed
    python -m benchmarks.peer --threads auto 2     # ours at the measured threads a trial, and at 2 (the peer's)
    python -m benchmarks.peer --pruning            # the second comparison: benchmarks/peer_pruning.py

Both run the same configs on the same model (the default config's MiniLM), the same training rows and held-out
rows (the search's own split, tokenized once by ``peft_search``'s data preparation), the same batch size, steps,
learning rate, schedule, seed and torch threads, one trial at a time on this machine:

- **peer**: a fresh Python process builds a ``transformers.Trainer`` with ``model_init`` (the trial's PEFT LoRA
  model) and ``compute_metrics`` (accuracy), and runs ``trainer.hyperparameter_search(backend="optuna")`` over the
  configs (an Optuna ``GridSampler``, so each runs once); each trial ends with ``trainer.evaluate()`` on the
  held-out rows, as the peer does when no evaluation strategy is set;
- **peft-search**: ``peft-search run`` with the same configs as explicit candidates (``search.num_trials`` = their
  count), a fresh process as a user runs it: Ray starts, trials run in Ray Tune, the table, the predictions and
  the report are written. One such arm per ``--packing`` value (``search.packing``: ``off``, ``auto`` or a group
  size K), so the same configs run alone and packed (issue 21) beside the peer.

Each is timed end to end (process start to exit), the arms alternated over ``--repeats`` with their order rotated
each time (this machine's speed drifts under sustained load); the best wall of each counts, and each trial's own
training and held-out scoring times and each config's accuracy are the medians over the repeats. Per arm also: the
training rows it ran a second of its wall (configs x steps x batch / wall) and its largest measured peak resident
memory (the peer: its process's; ours: a trial's, or a packed group's, as the trials table measures them).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import machine, table, write_result

TARGETS = {
    "qv": ["query", "value"],
    "attention": ["query", "key", "value", "attention.output.dense"],
    "attention+mlp": [
        "query",
        "key",
        "value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
}


def configs(ranks: list[int], rslora: bool = False) -> list[dict[str, Any]]:
    """The searched configs: LoRA at each rank on each target set (and rsLoRA's twin of each with ``rslora``), as
    PEFT's ``adapter_config.json``."""
    return [
        {
            "name": f"{kind}-r{r}-{where}",
            "peft_config": {
                "peft_type": "LORA",
                "task_type": "SEQ_CLS",
                "r": r,
                "lora_alpha": 2 * r,
                "lora_dropout": 0.05,
                "target_modules": targets,
                **({"use_rslora": True} if kind == "rslora" else {}),
            },
        }
        for kind in (["lora", "rslora"] if rslora else ["lora"])
        for r in ranks
        for where, targets in TARGETS.items()
    ]


def search_config(
    base: Path, candidates: list[dict[str, Any]], steps: int, learning_rate: float, sets: list[str] = ()
) -> dict:
    """The default config with the candidates as the whole search: no sampled trials, no early stopping;
    ``sets``: ``KEY.PATH=VALUE`` overrides of the search's own settings (``resources.cpu_allocator=system``)."""
    raw = yaml.safe_load(base.read_text())
    raw["name"] = "peer-bench"
    raw["space"] = {
        "methods": ["lora"],
        "quantization": ["none"],
        "candidates": [{**c, "quantization": "none", "learning_rate": learning_rate} for c in candidates],
    }
    raw["search"] = {**raw.get("search", {}), "num_trials": len(candidates), "early_stopping": "none"}
    raw["training"] = {**raw.get("training", {}), "max_steps": steps, "learning_rate": learning_rate}
    for text in sets:
        key, _, value = text.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return raw


def run_peer(config_path: Path, out: Path) -> None:
    """The peer's search, in this (fresh) process: what a user writes with transformers, PEFT and Optuna."""
    import optuna
    import torch
    from peft import get_peft_config, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.loading import load_config
    from peft_search.search.worker.environment import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    cfg = load_config(config_path)
    if (
        cfg.resources.cpus_per_worker != "auto"
    ):  # else torch's own default, every core, as a user's script has
        torch.set_num_threads(int(cfg.resources.cpus_per_worker))
    prep = prepare(cfg)
    settings, data = prep.settings, prep.data
    candidates = [dict(c.peft_config) for c in cfg.space.candidates]
    names = [c.name for c in cfg.space.candidates]

    def rows(split):
        return [{"input_ids": r["input_ids"], "labels": r["label"]} for r in split]

    chosen: list[int] = []  # each trial's config, in the order the peer ran them

    def model_init(trial):
        # Called before the Trainer asks hp_space (transformers 5): suggest here; Optuna answers the same again.
        index = 0 if trial is None else trial.suggest_categorical("config", list(range(len(candidates))))
        if trial is not None:
            chosen.append(index)
        torch.manual_seed(settings.seed)
        base = AutoModelForSequenceClassification.from_pretrained(
            settings.model_path, num_labels=data.num_labels, ignore_mismatched_sizes=True
        )
        return get_peft_model(base, get_peft_config(dict(candidates[index])))

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    class Clock(TrainerCallback):
        """Each trial's training and evaluation time, as the peer's own callbacks see them."""

        def __init__(self) -> None:
            self.trials: list[dict[str, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.trials.append({"train_begin": time.perf_counter()})

        def on_train_end(self, args, state, control, **kwargs):
            self.trials[-1]["train_s"] = time.perf_counter() - self.trials[-1]["train_begin"]
            self.trials[-1]["eval_begin"] = time.perf_counter()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.trials[-1]["eval_s"] = time.perf_counter() - self.trials[-1]["eval_begin"]
            self.trials[-1]["accuracy"] = float((metrics or {}).get("eval_accuracy", float("nan")))

    clock = Clock()
    t = cfg.training
    tokenizer = prep.tokenizer  # the one the rows were tokenized with (its padding side and pad token)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.eval_batch_size,
            max_steps=settings.steps,
            learning_rate=float(cfg.space.candidates[0].learning_rate),  # every candidate's
            warmup_steps=int(settings.steps * t.warmup_ratio),
            lr_scheduler_type="linear",
            weight_decay=float(t.arguments().fixed.get("weight_decay", 0.0)),
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=settings.seed,
        )
        trainer = Trainer(
            model_init=model_init,
            args=args,
            train_dataset=rows(data.train),
            eval_dataset=rows(data.eval),
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
            callbacks=[clock],
        )
        trainer.hyperparameter_search(
            hp_space=lambda trial: {
                "config": trial.suggest_categorical("config", list(range(len(candidates))))
            },
            backend="optuna",
            direction="maximize",
            n_trials=len(candidates),
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            sampler=optuna.samplers.GridSampler({"config": list(range(len(candidates)))}, seed=settings.seed),
        )
    out.write_text(
        json.dumps(
            {
                "in_process_s": time.perf_counter() - started,
                "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "trials": [
                    {"config": names[i], **{k: v for k, v in rec.items() if not k.endswith("_begin")}}
                    for i, rec in zip(chosen, clock.trials, strict=True)
                ],
            }
        )
    )


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


PACKED_PEAK = "group_peak_memory_bytes"
"""A packed trial's group's measured peak: the memory its arm took, where a trial alone has its own peak."""


def arm_name(packing: str, threads: str = "auto") -> str:
    """A ``peft-search run`` arm's name in the results: ``peft-search`` (alone, ``cpus_per_worker`` as the config
    says), with ``packing=K`` packed and ``threads=T`` at T threads a trial."""
    extra = ([f"packing={packing}"] if packing != "off" else []) + (
        [f"threads={threads}"] if threads != "auto" else []
    )
    return " ".join(["peft-search", *extra])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from peft_search.search.results.layout import ResultsDir
    from peft_search.search.settings.loading import default_config_path, load_config

    candidates = configs(args.ranks, args.rslora)
    shapes = {arm_name(p, t): (p, t) for p in args.packing for t in args.threads}
    arms = ["peer", *shapes]
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
        config_path = Path(tmp) / "search.yaml"
        raw = search_config(
            Path(args.config or default_config_path()), candidates, args.steps, args.learning_rate, args.set
        )
        config_path.write_text(yaml.safe_dump(raw))
        batch_size = load_config(config_path).training.batch_size  # the config's, or the schema's default
        peer_out = Path(tmp) / "peer.json"
        walls: dict[str, list[float]] = {arm: [] for arm in arms}
        runs: dict[str, list[dict[str, dict[str, Any]]]] = {arm: [] for arm in arms}  # per repeat: by config
        peaks: dict[str, list[float]] = {arm: [] for arm in arms}
        for repeat in range(args.repeats):
            # Alternated, the order rotated each repeat: this machine's speed drifts under sustained load, which
            # would otherwise favour whichever always runs first.
            shift = repeat % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                if arm == "peer":
                    command = [
                        sys.executable,
                        "-m",
                        "benchmarks.peer",
                        "peer",
                        str(config_path),
                        str(peer_out),
                    ]
                    walls[arm].append(timed(command))
                    peer = json.loads(peer_out.read_text())
                    runs[arm].append({t["config"]: t for t in peer["trials"]})
                    peaks[arm].append(peer["max_rss_bytes"] / 2**20)
                    continue
                packing, threads = shapes[arm]
                results = Path(tmp) / f"results-{repeat}-{packing}-{threads}"
                command = [sys.executable, "-m", "peft_search", "run", str(config_path)]
                command += ["--results-dir", str(results), "--set", f"search.packing={packing}"]
                if threads != "auto":
                    command += ["--set", f"resources.cpus_per_worker={threads}"]
                walls[arm].append(timed(command))
                trials = ResultsDir(results / "peer-bench").read_trials().to_dict("records")
                done = [r for r in trials if r["status"] == "complete"]
                runs[arm].append(
                    {
                        r["candidate"]: {
                            "accuracy": r.get("accuracy"),
                            "train_s": r.get("train_time_s"),
                            "eval_s": r.get("eval_time_s"),
                            "group": r.get("group") if isinstance(r.get("group"), str) else None,
                        }
                        for r in done
                    }
                )
                peaks[arm].append(
                    max(_finite(r.get(k)) or 0 for r in done for k in ("peak_memory_bytes", PACKED_PEAK))
                    / 2**20
                )

    def median(values: list[float | None]) -> float | None:
        values = [v for v in values if _finite(v) is not None]
        return statistics.median(values) if values else None

    per_config = []
    for c in candidates:
        row: dict[str, Any] = {"config": c["name"]}
        for arm in arms:
            mine = [run.get(c["name"], {}) for run in runs[arm]]  # a config missing from a run has no figures
            for figure in ("accuracy", "train_s", "eval_s"):
                row[f"{figure}[{arm}]"] = median([m.get(figure) for m in mine])
            if arm != "peer":
                row[f"group[{arm}]"] = next((m["group"] for m in mine if m.get("group")), None)
        per_config.append(row)
    best = {arm: min(w) for arm, w in walls.items()}
    rows_trained = len(candidates) * args.steps * batch_size
    summary = [
        {
            "arm": arm,
            "best_wall_s": best[arm],
            "walls_s": walls[arm],
            "speed_vs_peer": best["peer"] / best[arm],
            "train_rows_per_wall_s": rows_trained / best[arm],
            "train_s": sum(r[f"train_s[{arm}]"] or 0.0 for r in per_config),
            "eval_s": sum(r[f"eval_s[{arm}]"] or 0.0 for r in per_config),
            "peak_mib": max(peaks[arm]),
            "mean_accuracy": statistics.fmean(  # of each config's median accuracy
                r[f"accuracy[{arm}]"] for r in per_config if r[f"accuracy[{arm}]"] is not None
            ),
            "complete": [len(run) for run in runs[arm]],
        }
        for arm in arms
    ]
    return {
        "benchmark": "peer",
        "machine": machine(),
        "configs": len(candidates),
        "steps": args.steps,
        "batch_size": batch_size,
        "learning_rate": args.learning_rate,
        "arms": arms,
        "summary": summary,
        "per_config": per_config,
    }


def _finite(value: Any) -> float | None:
    """A figure from a results row, or None where it has none (missing, None, NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value else None


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["peer"]:  # the peer's own process
        run_peer(Path(argv[1]), Path(argv[2]))
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument(
        "--rslora", action="store_true", help="each config's rsLoRA twin too (twice the configs)"
    )
    parser.add_argument(
        "--packing",
        nargs="+",
        default=["off"],
        help="one peft-search arm per search.packing value (off, auto, or a group size)",
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        default=["auto"],
        help="one peft-search arm per resources.cpus_per_worker value (auto: as the config says)",
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each, alternated; the best wall and median times count",
    )
    parser.add_argument(
        "--config", default=None, help="the search config to start from (default: the default)"
    )
    parser.add_argument("--set", action="append", default=[], help="KEY.PATH=VALUE in the search's config")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument(
        "--pruning",
        action="store_true",
        help="the second comparison (benchmarks.peer_pruning): 18 configs of the default space, the peer with "
        "Optuna's MedianPruner against peft-search run with early stopping",
    )
    parser.add_argument("--seed", type=int, default=0, help="--pruning: the draw of the configs")
    args = parser.parse_args(argv)
    if args.pruning:
        from benchmarks import peer_pruning

        return peer_pruning.main(args)
    result = run(args)
    path = write_result("peer", result, args.out_dir)
    arms = result["arms"]
    columns = ["config", *(f"{figure}[{arm}]" for figure in ("accuracy", "train_s") for arm in arms)]
    print(table(result["per_config"], columns))
    print(table(result["summary"], [k for k in result["summary"][0] if k != "walls_s"]))
    print(f"{result['configs']} configs, {result['steps']} steps; written to {path}")
    return result


if __name__ == "__main__":
    main()

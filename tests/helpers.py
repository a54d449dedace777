"""Test helpers: build a real prepared search from a tiny model, and sample one trial from the real space."""

from __future__ import annotations

import json
import random
from typing import Any

import optuna
import pandas as pd

from peft_search.search.loop.prepare import Prepared, prepare
from peft_search.search.settings.loading import parse_config
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.spaces.sampling import DefineByRun, SpaceSpec


def tiny_config(model: str, data: str, task: str = "sequence-classification", **overrides: Any):
    raw: dict[str, Any] = {
        "name": "tiny",
        "model": {"name_or_path": model, "task": task},
        "dataset": {"source": data, "train_per_class": 8, "train_size": 24, "eval_size": 12},
        "space": {
            "methods": ["lora"],
            "targets": ["attention", "attention+mlp", "all-linear"],
            "ranks": [2, 4],
            "layers": ["all", "top-half", "every-other"],
            "virtual_tokens": [4],
        },
        "training": {"max_steps": 1, "batch_size": 4, "max_seq_length": 24, "eval_batch_size": 8},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(raw)


def lora_space(*ranks: int, learning_rate: float = 1e-2) -> dict[str, Any]:
    """``space``: explicit LoRA candidates on query and value (``r2``, ``r8``, ...), nothing sampled."""
    lora = {"peft_type": "LORA", "task_type": "SEQ_CLS", "target_modules": ["query", "value"]}
    return {
        "methods": [],
        "candidates": [
            {"name": f"r{r}", "peft_config": {**lora, "r": r}, "learning_rate": learning_rate} for r in ranks
        ],
    }


def prepared(model: str, data: str, task: str, tmp_path) -> tuple[Prepared, TrialSettings]:
    cfg = tiny_config(model, data, task, results_dir=str(tmp_path))
    prep = prepare(cfg)
    return prep, prep.settings


def sample_trial(prep: Prepared, method: str, quantization: str = "none", **fixed: Any) -> TrialConfig:
    """One trial config drawn from the real define-by-run space with some parameters pinned."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"method": method, **fixed})
    spec = SpaceSpec(methods=(method,), quantization=(quantization,), learning_rate=(1e-2, 1e-2))
    return TrialConfig.from_mapping(DefineByRun(spec, prep.space_context)(study.ask()))


EVIL = "<script>window.__xss=1</script>"


def synthetic_search(tmp_path, n: int, evil: bool = False):
    """A results directory written as a search writes it (``trials.parquet``, ``run.json``), ``n`` trials of made-up
    figures, without running one; ``evil``: markup in every free-text field (the report must escape it)."""
    rng = random.Random(0)
    methods = ["lora", "ia3", "vera", "bitfit", "prompt_tuning", "loha"]
    rows = []
    for i in range(n):
        status = "complete" if i % 10 else rng.choice(["failed", "infeasible", "running"])
        method = rng.choice(methods)
        row = {
            "trial_id": f"t{i:04d}",
            "status": status,
            "method": method,
            "candidate": "sampled",
            "quantization": rng.choice(["none", "int8", "nf4"]),
            "learning_rate": 10 ** rng.uniform(-4, -2),
            "peft_type": method.upper(),
            "peft_config": json.dumps({"peft_type": method.upper(), "r": 8}),
            "error": (EVIL if evil else "RuntimeError: boom") if status == "failed" else "",
            "wall_time_s": 40.0,
        }
        if status == "complete":
            row.update(
                accuracy=rng.uniform(0.3, 0.95),
                eval_loss=rng.uniform(0.1, 2),
                trainable_params=rng.randint(5e3, 5e6),
                peak_memory_bytes=rng.uniform(5e8, 8e9),
                est_peak_memory_bytes=rng.uniform(5e8, 8e9),
                peak_memory_kind="cpu_rss",
                train_time_s=20.0,
                samples_per_s=30.0,
                adapter_bytes=1e5,
            )
        rows.append(row)
    path = tmp_path / "search"
    path.mkdir()
    pd.DataFrame(rows).to_parquet(path / "trials.parquet")
    facts = {
        "name": "synthetic",
        "model": EVIL if evil else "tiny",
        "dataset": "d",
        "objectives": [
            {"metric": "accuracy", "mode": "max"},
            {"metric": "trainable_params", "mode": "min"},
            {"metric": "peak_memory_bytes", "mode": "min"},
        ],
    }
    (path / "run.json").write_text(json.dumps(facts))
    return path

"""Test helpers: build a real prepared search from a tiny model, and sample one trial from the real space."""

from __future__ import annotations

from typing import Any

import optuna

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

"""The steps every trial takes, each written once: a trial alone (``search.worker.training``) and a packed group
(``search.worker.packed``) both call them and add only what differs.

Choose the device, plan the trial and check its budget, load the base model, evaluate at a rung and at the end,
check the training loss, save and store the adapter, and build the results a trial reports (``rung_result``,
``final_result``). A new metric is one entry in the registry (``search.results.metrics``) and the code that
measures it, here or in what calls these.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from peft_search.search.inputs.adapterhub import adapter_files
from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.inputs.modeling import generic_4bit_cpu_path, load_base_model
from peft_search.search.plan.planning import Plan
from peft_search.search.results.records import CURVE_KEY, PREDICTIONS_KEY, RUNG_KEY, STATUS_KEY
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.costs import check_budget, plan_trial
from peft_search.search.worker.environment import allocator_label, node_id
from peft_search.search.worker.evaluation import Evaluation, evaluate
from peft_search.search.worker.memory import PeakMemory
from peft_search.search.worker.placement import CHECKPOINT, store_adapter


def trial_device(settings: TrialSettings) -> torch.device:
    """The device a worker trains on, its CPU threads set: Ray sets ``CUDA_VISIBLE_DEVICES`` to the worker's GPUs;
    on CPU, torch uses exactly the cores the worker holds."""
    torch.set_num_threads(max(1, int(settings.resources.cpus_per_worker)))
    gpu = settings.resources.gpus_per_worker > 0 and torch.cuda.is_available()
    return torch.device("cuda", 0) if gpu else torch.device("cpu")


def planned(
    trial: TrialConfig, settings: TrialSettings, num_labels: int, peak: PeakMemory, device: torch.device
) -> Plan:
    """The trial's cost from its config alone, before any weight is loaded; over budget raises
    ``InfeasibleTrialError``."""
    plan = plan_trial(trial, settings, num_labels, runtime_bytes=peak.baseline_bytes(), device=device.type)
    check_budget(plan, settings.budget)
    return plan


def load_base(settings: TrialSettings, data: TokenizedSplits, quantization: str, device: torch.device):
    """The base model at a quantization level, as the search's settings ask."""
    t = settings.training
    return load_base_model(
        settings.model_path,
        settings.task,
        num_labels=data.num_labels,
        quantization=quantization,
        device=device,
        precision=t.precision,
        pad_token_id=data.pad_token_id,
        revision=settings.revision,
        gradient_checkpointing=t.gradient_checkpointing,
    )


def evaluate_rung(model, data: TokenizedSplits, settings: TrialSettings, device: torch.device) -> Evaluation:
    """Part-way, on the first ``rung_eval_size`` held-out rows; the model is back in training mode after."""
    rows = dataclasses.replace(data, eval=data.eval[: settings.rung_eval_size])
    with generic_4bit_cpu_path(model):  # training resumes after this evaluation
        evaluation = evaluate(model, rows, settings.task, settings.training.eval_batch_size, device)
    model.train()
    return evaluation


def evaluate_final(
    model, data: TokenizedSplits, settings: TrialSettings, device: torch.device
) -> tuple[Evaluation, float]:
    """On the whole held-out split; and its seconds."""
    t = time.perf_counter()
    evaluation = evaluate(model, data, settings.task, settings.training.eval_batch_size, device)
    return evaluation, time.perf_counter() - t


def check_finite(loss: float, step: int) -> None:
    """A training loss that became NaN or infinite fails the trial."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss became non-finite by step {step}")


def save_adapter(model, name: str | None = None) -> tuple[tempfile.TemporaryDirectory, int]:
    """The adapter in a temporary directory (``name``: one of several in the model, saved as a trial alone saves
    its own), and the size of its weight files (what ships, what ``plan`` predicts)."""
    adapter_dir = tempfile.TemporaryDirectory(prefix="adapter-")
    if name is None:
        model.save_pretrained(adapter_dir.name)
    else:  # PEFT writes a named adapter to a subdirectory of that name: its files move up
        model.save_pretrained(adapter_dir.name, selected_adapters=[name])
        saved = Path(adapter_dir.name) / name
        for path in saved.iterdir():
            path.rename(Path(adapter_dir.name) / path.name)
        saved.rmdir()
    return adapter_dir, sum(p.stat().st_size for p in adapter_files(adapter_dir.name))


def stored_result(
    metrics: dict[str, Any], adapter_dir: tempfile.TemporaryDirectory, settings: TrialSettings, trial_id: str
) -> dict[str, Any]:
    """The trial's final result with its adapter stored where Ray Train would have put it
    (``train/train-TRIAL/checkpoint_000000``); the path travels as ``checkpoint_path``, the key Ray's
    ``TuneReportCallback`` uses, so the results table reads every kind of trial alike."""
    with adapter_dir:
        target = store_adapter(adapter_dir.name, settings.adapters_path, f"train-{trial_id}/{CHECKPOINT}")
    return {**metrics, "worker_pid": os.getpid(), "checkpoint_path": target}


def cost_metrics(
    *,
    trainable: int,
    total: int,
    plan: Plan,
    peak_bytes: int,
    peak_kind: str,
    load_s: float,
    train_s: float,
    samples: int,
    tokens: int,
    seconds: float,
) -> dict[str, Any]:
    """What a trial costs so far: its parameters, its peak memory beside the planned one, its times, and the rows
    and tokens it trained per second of ``seconds``."""
    return {
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_bytes": peak_bytes,
        "est_peak_memory_bytes": plan.est_peak_memory_bytes,
        "peak_memory_kind": peak_kind,
        "train_time_s": train_s,
        "load_time_s": load_s,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }


def rung_result(
    step: int, evaluation: Evaluation, costs: dict[str, Any], *, plan: Plan, rung_eval_s: float, **extra: Any
) -> dict[str, Any]:
    """A part-way result at a rung (``RUNG_KEY`` set), with every metric an objective may name, so the scheduler
    can compare trials there; the adapter's size is the planned one (it is saved only once trained)."""
    return {
        STATUS_KEY: "running",
        RUNG_KEY: step,
        **evaluation.metrics(),
        **costs,
        "adapter_bytes": plan.adapter_bytes,
        "train_steps": step,
        "rung_eval_time_s": rung_eval_s,
        "eval_rows": len(evaluation.correct),
        **extra,
    }


def final_result(
    evaluation: Evaluation,
    curve: dict[str, list[float]],
    costs: dict[str, Any],
    *,
    settings: TrialSettings,
    device: torch.device,
    eval_s: float,
    rung_eval_s: float,
    adapter_bytes: int,
    world_size: int = 1,
    resumed_from_step: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A trained trial's result: its held-out metrics and rows, its learning curve, its costs, and where and how
    it ran."""
    return {
        STATUS_KEY: "complete",
        **evaluation.metrics(),
        PREDICTIONS_KEY: evaluation.rows(),
        CURVE_KEY: curve,
        **costs,
        "eval_time_s": eval_s,
        "rung_eval_time_s": rung_eval_s,
        "eval_rows": len(evaluation.correct),
        "train_steps": settings.steps,
        "adapter_bytes": adapter_bytes,
        "world_size": world_size,
        "device": str(device.type),
        "node_id": node_id(),
        "cpu_allocator": allocator_label(),
        "resumed_from_step": resumed_from_step,
        **extra,
    }


__all__ = [
    "check_finite",
    "cost_metrics",
    "evaluate_final",
    "evaluate_rung",
    "final_result",
    "load_base",
    "planned",
    "rung_result",
    "save_adapter",
    "stored_result",
    "trial_device",
]

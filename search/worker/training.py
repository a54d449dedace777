"""One trial's work, wherever it runs: plan, load and inject, train (``transformers.Trainer``), evaluate, save.

Knows nothing of Optuna or of how trials are chosen and stopped: it receives the search's settings and one sampled
config and returns metrics keyed by the metric registry (``search.results.metrics``). Part-way results at early
stopping's rungs go to an ``on_rung`` callback (``ray.tune.report`` in a Tune actor).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.inputs.modeling import inject_adapter
from peft_search.search.plan.planning import Plan
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.verbosity import verbose
from peft_search.search.worker import faults
from peft_search.search.worker.environment import import_training_libraries
from peft_search.search.worker.memory import PeakMemory, release_accelerator_memory
from peft_search.search.worker.steps import (
    cost_metrics,
    evaluate_final,
    evaluate_rung,
    final_result,
    load_base,
    planned,
    rung_result,
    save_adapter,
)
from peft_search.search.worker.trainer import (
    AdaLoraCallback,
    AnnounceCallback,
    CheckpointCallback,
    CountingCollator,
    FiniteLossCallback,
    StepCallback,
    build_trainer,
    learning_curve,
    training_arguments,
)

OnRung = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class _Costs:
    """What a trial costs so far; shared by its rung results and its final result."""

    trainable: int
    total: int
    plan: Plan
    peak: PeakMemory
    load_s: float
    world_size: int

    def metrics(self, *, trained_s: float, samples: int, tokens: int) -> dict[str, Any]:
        return cost_metrics(
            trainable=self.trainable,
            total=self.total,
            plan=self.plan,
            peak_bytes=self.peak.peak_bytes(),
            peak_kind=self.peak.kind,
            load_s=self.load_s,
            train_s=trained_s,
            samples=samples * self.world_size,
            tokens=tokens * self.world_size,
            seconds=trained_s,
        )


def run_trial(
    trial: TrialConfig,
    settings: TrialSettings,
    data: TokenizedSplits,
    *,
    device: torch.device,
    world_size: int = 1,
    rank: int = 0,
    on_rung: OnRung | None = None,
    on_checkpoint: Callable[[int, str], None] | None = None,
    resume_from: str | None = None,
    widen: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], tempfile.TemporaryDirectory | None]:
    """Train and evaluate one adapter; returns its metrics and (on rank 0) a directory holding the adapter.

    With ``on_rung``, at each of ``settings.rungs`` the adapter is evaluated on the first ``rung_eval_size``
    held-out rows and ``on_rung`` gets a part-way result (``RUNG_KEY`` set) with every metric an objective may
    name, so a scheduler can compare trials there and stop this one. With ``training.checkpoint_every``, each
    mid-trial checkpoint the Trainer saves goes to ``on_checkpoint(step, path)``; ``resume_from`` (such a
    checkpoint's directory) continues the trial from it. ``widen(steps_done)`` is called after each optimizer step
    and before the final evaluation (``search.worker.spare``: the threads a trial may take). Raises
    ``InfeasibleTrialError`` for a config PEFT refuses or the budget rules out.
    """
    # Plan: the cost from the config alone, before the weights; over budget is infeasible.
    import_training_libraries(trial.quantization)
    peak = PeakMemory(device)
    peak.start()
    plan = planned(trial, settings, data.num_labels, peak, device)

    # Load the base model at its quantization level and inject the adapter.
    seed = settings.seed if trial.seed is None else trial.seed
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = inject_adapter(load_base(settings, data, trial.quantization, device), trial.peft_config)
    trainable, total = model.get_nb_trainable_parameters()
    costs = _Costs(int(trainable), int(total), plan, peak, time.perf_counter() - t0, world_size)
    faults.inject(settings.faults, trial.candidate, device)

    # Train with the Trainer, with part-way evaluations at the rungs.
    with tempfile.TemporaryDirectory(prefix="trainer-") as output_dir:
        args = training_arguments(trial, settings, data, output_dir=output_dir, seed=seed, device=device)
        callbacks: list = [FiniteLossCallback()]
        if trial.peft_config["peft_type"].upper() == "ADALORA":
            callbacks.append(AdaLoraCallback(model))
        rung = _Rung(on_rung, model, data, settings, costs, device) if on_rung else None
        if rung is not None:
            callbacks.append(StepCallback(rung))
        if world_size > 1 and verbose():
            callbacks.append(AnnounceCallback(rank, world_size))
        if on_checkpoint is not None:
            callbacks.append(CheckpointCallback(on_checkpoint, settings.training.checkpoint_seconds()))
        if widen is not None:
            callbacks.append(StepCallback(widen))
        fault_at = faults.fault_step(settings.faults, trial.candidate)
        if fault_at is not None and resume_from is None:  # a retried trial gets through
            candidate = trial.candidate

            def fault(step: int) -> None:
                if step == fault_at:
                    faults.inject(settings.faults, candidate, device, at_step=True)

            callbacks.append(StepCallback(fault, after_saving=True))  # a checkpoint of that step is kept
        trainer, counted = build_trainer(model, args, data, callbacks, settings.task)
        if rung is not None:
            rung.counted = counted
        t1 = time.perf_counter()
        if rung is not None:
            rung.started = t1
        trainer.train(resume_from_checkpoint=resume_from)
        train_s = time.perf_counter() - t1 - (rung.seconds if rung else 0.0)
        curve = learning_curve(trainer.state.log_history, rung.evaluations if rung else [])
        trainer = None  # holds the optimizer state: freed before evaluating

    # Evaluate on the whole held-out split, save the adapter (rank 0).
    if widen is not None:
        widen(settings.steps)
    evaluation, eval_s = evaluate_final(model, data, settings, device)
    adapter_dir, adapter_bytes = save_adapter(model) if rank == 0 else (None, 0)
    metrics = final_result(
        evaluation,
        curve,
        costs.metrics(trained_s=train_s, samples=counted.samples, tokens=counted.tokens),
        settings=settings,
        device=device,
        eval_s=eval_s,
        rung_eval_s=rung.seconds if rung else 0.0,
        adapter_bytes=adapter_bytes,
        world_size=world_size,
        resumed_from_step=checkpoint_step(resume_from) if resume_from else 0,
    )
    model = rung = None  # free the weights before the next trial (the rung holds them too)
    release_accelerator_memory()
    return metrics, adapter_dir


def checkpoint_step(path: str) -> int:
    """The optimizer step a Trainer checkpoint was saved at (its ``trainer_state.json``)."""
    return int(json.loads((Path(path) / "trainer_state.json").read_text())["global_step"])


class _Rung:
    """Part-way evaluation at early stopping's rungs: on the first ``rung_eval_size`` held-out rows, reported
    with every metric an objective may name. Its time is not training time."""

    def __init__(self, report: OnRung, model, data, settings: TrialSettings, costs, device):
        self.report, self.model, self.data = report, model, data
        self.settings, self.costs, self.device = settings, costs, device
        self.steps = {r for r in settings.rungs if r < settings.steps}
        self.seconds = 0.0
        self.started = 0.0
        self.counted: CountingCollator | None = None
        self.evaluations: list[dict[str, Any]] = []

    def __call__(self, step: int) -> None:
        if step not in self.steps:
            return
        t = time.perf_counter()
        samples, tokens = (self.counted.samples, self.counted.tokens) if self.counted else (0, 0)
        evaluation = evaluate_rung(self.model, self.data, self.settings, self.device)
        metrics = evaluation.metrics()
        self.evaluations.append({"step": step, **metrics})
        costs = self.costs.metrics(trained_s=t - self.started - self.seconds, samples=samples, tokens=tokens)
        self.report(
            rung_result(
                step,
                evaluation,
                costs,
                plan=self.costs.plan,
                rung_eval_s=self.seconds + time.perf_counter() - t,
            )
        )
        self.seconds += time.perf_counter() - t

"""A trial's ``transformers.Trainer``: its ``TrainingArguments``, batches, and the callbacks the search needs.

The Trainer does the optimisation (optimizer and scheduler choice, gradient accumulation and clipping, mixed
precision, DDP or FSDP through Accelerate, ``torch.compile``): everything ``training:`` may set. The search adds,
as ``TrainerCallback`` objects:

- rung evaluations for early stopping (``RungCallback``, reported to Tune by ``search.worker.training``);
- AdaLoRA's ``update_and_allocate`` after each optimizer step, while the gradients are still there;
- a non-finite training loss fails the trial, read on the host only at logging steps (no per-step sync);
- the learning curve, from the Trainer's own ``log_history``.

Causal LM trials train on the answer tokens only (the prompt's labels are -100, set at tokenizing): the plain
Trainer with that completion-only collation is what TRL's ``SFTTrainer`` does with ``completion_only_loss``.
Multi-worker trials run this same Trainer inside Ray Train's workers, which set up ``torch.distributed``; Ray's
``prepare_trainer`` is only needed for Ray Data iterables, and the trials' rows are plain lists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.batches import pad_batch
from peft_search.search.worker.steps import check_finite

CURVE_POINTS = 50
"""The learning curve's points by default: the Trainer logs every ``max(1, steps // CURVE_POINTS)`` steps."""


class CountingCollator:
    """Pads each batch to its longest row (``pad_batch``) and counts the rows and real tokens it served."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.samples = self.tokens = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(rows, self.pad_token_id)
        self.samples += batch["input_ids"].shape[0]
        self.tokens += int(batch["attention_mask"].sum())
        return batch


def trial_arguments(trial: TrialConfig, settings: TrialSettings) -> dict[str, Any]:
    """The ``TrainingArguments`` fields ``training:`` sets for this trial: the fixed ones and its searched values."""
    return {**settings.training.arguments().fixed, **trial.training}


def training_arguments(
    trial: TrialConfig,
    settings: TrialSettings,
    data: TokenizedSplits,
    *,
    output_dir: str,
    seed: int,
    device: torch.device,
) -> TrainingArguments:
    """The trial's ``TrainingArguments``: the search's settings, then every field ``training:`` gives."""
    t, steps = settings.training, settings.steps
    user = trial_arguments(trial, settings)
    accumulation = int(user.get("gradient_accumulation_steps", 1))
    defaults: dict[str, Any] = {
        "logging_steps": max(1, steps // CURVE_POINTS),
        "logging_nan_inf_filter": False,  # a non-finite loss is logged as it is, so it fails the trial
        # Adapters train every parameter that requires a gradient: DDP need not search the graph for unused ones.
        "ddp_find_unused_parameters": False,
        "disable_tqdm": True,
        "dataloader_pin_memory": device.type == "cuda",
        "dataloader_drop_last": len(data.train) > t.batch_size,
    }
    saving: dict[str, Any] = {"save_strategy": "no"}  # the search saves the adapter once, trained
    every = t.checkpoint_every
    if isinstance(every, int):  # mid-trial checkpoints (by minutes: CheckpointCallback asks for them)
        saving = {"save_strategy": "steps", "save_steps": every}
    if every is not None:
        saving["save_total_limit"] = 1  # the latest stays here; Tune keeps it with the trial
    return TrainingArguments(
        **{**defaults, **user},
        **saving,
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=settings.micro_batch_size(accumulation),
        learning_rate=trial.learning_rate,
        warmup_steps=int(steps * t.warmup_ratio),
        seed=seed,
        **_sampling(t.train_sampling_strategy),
        report_to="none",  # tracking is Ray Tune's (its logger callbacks), from what trials report
        eval_strategy="no",  # held-out evaluation is the search's (rungs and the end)
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=device.type == "cpu",
    )


def _sampling(strategy: str) -> dict[str, Any]:
    """``training.train_sampling_strategy`` as this transformers release spells it."""
    fields = TrainingArguments.__dataclass_fields__
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": strategy}
    return {"group_by_length": strategy == "group_by_length"}


def build_trainer(
    model,
    args: TrainingArguments,
    data: TokenizedSplits,
    callbacks: list[TrainerCallback],
    task: str = "sequence-classification",
) -> tuple[Trainer, CountingCollator]:
    """The Trainer over the trial's training rows, with the search's callbacks and without console printing."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if task == "sequence-classification" and hasattr(model, "get_base_model"):
        # A classifier's forward takes **kwargs but its loss is the mean over its own rows, ignoring the Trainer's
        # num_items_in_batch: told otherwise, the Trainer would neither divide by the accumulation steps nor
        # leave the loss unscaled across workers. The mean of equal micro-batches' means is the batch's mean.
        model.get_base_model().accepts_loss_kwargs = False
    collator = CountingCollator(data.pad_token_id)
    trainer = Trainer(
        model=model, args=args, train_dataset=data.train, data_collator=collator, callbacks=callbacks
    )
    for printer in (PrinterCallback, ProgressCallback):  # the search prints its own progress
        trainer.remove_callback(printer)
    return trainer, collator


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA's rank allocation after each optimizer step, before the gradients are zeroed (as PEFT asks)."""

    def __init__(self, peft_model) -> None:
        self.peft_model = peft_model

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.peft_model.base_model.update_and_allocate(state.global_step)


class FiniteLossCallback(TrainerCallback):
    """A training loss that became NaN or infinite fails the trial, at the next logging step (or the end)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if value is not None:
                check_finite(value, state.global_step)


class AnnounceCallback(TrainerCallback):
    """With ``-v``: each worker of a multi-worker trial says when it starts training (its process group is up)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def on_train_begin(self, args, state, control, **kwargs):
        print(f"[peft-search] worker {self.rank} of {self.world_size}: training", flush=True)


class CheckpointCallback(TrainerCallback):
    """Hands each checkpoint the Trainer saves (``checkpoint-STEP`` in its output directory) to ``keep(step,
    path)``, e.g. to report it to Tune; with ``seconds``, also asks for one every that many seconds."""

    def __init__(self, keep: Callable[[int, str], None], seconds: float | None = None) -> None:
        self.keep, self.seconds = keep, seconds
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is not None and time.monotonic() - self.last >= self.seconds:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()
        self.keep(state.global_step, os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


class StepCallback(TrainerCallback):
    """Calls ``fn(step)`` after each optimizer step (rung evaluations); with ``after_saving``, only once the
    Trainer has logged and saved what that step asks (as the next step begins)."""

    def __init__(self, fn: Callable[[int], None], after_saving: bool = False) -> None:
        self.fn, self.after_saving = fn, after_saving

    def on_step_end(self, args, state, control, **kwargs):
        if not self.after_saving:
            self.fn(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.after_saving and state.global_step > 0:
            self.fn(state.global_step)


def learning_curve(log_history: list[Mapping[str, Any]], evaluations: list[Mapping[str, Any]]) -> dict:
    """``CURVE_KEY``'s value: the logged training loss, learning rate and gradient norm by step, and the rungs'
    held-out accuracy and loss by step."""
    logged = [e for e in log_history if "loss" in e and "step" in e]
    curve: dict[str, list[float]] = {
        "step": [int(e["step"]) for e in logged],
        "loss": [float(e["loss"]) for e in logged],
    }
    for key in ("learning_rate", "grad_norm"):  # logged with the loss, unless clipping is off (no norm)
        if logged and all(e.get(key) is not None for e in logged):
            curve[key] = [float(e[key]) for e in logged]
    if evaluations:
        curve["eval_step"] = [int(e["step"]) for e in evaluations]
        curve["eval_accuracy"] = [float(e["accuracy"]) for e in evaluations]
        curve["eval_loss"] = [float(e["eval_loss"]) for e in evaluations]
    return curve

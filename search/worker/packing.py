"""Packed trials: several LoRA-family trials trained at once on one base model, by one ``transformers.Trainer``.

A search trains many adapters on the same frozen base model, each at the small batch its config asks for. Where the
device is under-filled at that batch (a GPU at a LoRA trial's batch), one step over K trials' micro-batches together
costs less than K steps; where it is full (2 CPU cores at batch 16), it costs the same. So a group of K trials loads
the base model once, adds each trial's adapter under its own name, and trains them all in each step:

- the step's batch is each member's own micro-batch, one after the other; each row goes through its member's adapter
  only, by PEFT's mixed-adapter-batch forward (the ``adapter_names`` pre-forward hooks PEFT registers for inference,
  registered here in training too: ``AdapterRouter``);
- the loss is the sum of the members' own losses (each the mean over its own rows), so each adapter's gradient is
  that of its own loss: the adapters share no parameter and the base model is frozen;
- the optimizer holds each member's parameters in its own groups, with its own learning rate and weight decay; the
  scheduler (one ``LambdaLR`` factor for all groups, as the Trainer builds it) scales each group's own rate, so each
  member follows its own schedule; each member's gradients are clipped to its own ``max_grad_norm``;
- members share the search's seed and micro-batch size, so they see the same rows in the same order, and each
  adapter is initialised from the random state the base model left, as it would be alone.

With ``search.packing: auto`` the search first measures whether packing pays on the workers' device
(``measure_packing``: one packed step of K LoRA adapters against each adapter's step alone) and packs only where a
packed row is at least ``PACKING_PAYS`` times cheaper (``search.worker.pack_groups.decide_packing``).

Trained so, a member's adapter equals the one it would get alone (``tests/search/test_packing.py``), dropout aside:
dropout masks are drawn for the whole packed batch, so with dropout a member's run is a different draw from the
same distribution. Which configs can pack, and with which others, is ``packing_refusal`` and ``pack_key``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.inputs.candidates import TASK_TYPES
from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.inputs.modeling import generic_4bit_cpu_path, load_base_model
from peft_search.search.plan.packable import group_peak_bytes, packing_refusal
from peft_search.search.results.records import CURVE_KEY, ERROR_KEY, PREDICTIONS_KEY, RUNG_KEY, STATUS_KEY
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker import faults
from peft_search.search.worker.costs import check_budget, plan_trial
from peft_search.search.worker.environment import heap_allocator, import_training_libraries, node_id
from peft_search.search.worker.evaluation import evaluate
from peft_search.search.worker.memory import PeakMemory, release_accelerator_memory
from peft_search.search.worker.packed_trainer import (
    ROUTE,
    AdapterRouter,
    Member,
    MemberCurves,
    PackedCollator,
    PackedTrainer,
    member_loss,
)
from peft_search.search.worker.trainer import StepCallback, training_arguments, trial_arguments

PER_MEMBER = ("learning_rate", "weight_decay", "max_grad_norm")
"""``TrainingArguments`` fields each member of a group keeps its own value of; members agree on all others."""
SPEEDUP_KEY = "packing_speedup"
"""In a packed trial's results (``auto``): how many times as fast a row trains packed as alone, as the search
measured before its trials."""
OnRung = Callable[[str, dict[str, Any]], bool]
"""``on_rung(member, result)``: a member's part-way result; False when the search stopped that member there."""


def pack_key(trial: TrialConfig, settings: TrialSettings) -> str:
    """Trials with equal keys can train in one group: same quantization level, seed and training arguments (bar
    ``PER_MEMBER``), so one base model, one data order and one Trainer serve them all."""
    shared = {k: v for k, v in trial_arguments(trial, settings).items() if k not in PER_MEMBER}
    seed = settings.seed if trial.seed is None else trial.seed
    return json.dumps([trial.quantization, seed, shared], sort_keys=True, default=str)


def run_group(
    trials: Sequence[tuple[str, TrialConfig]],
    settings: TrialSettings,
    data: TokenizedSplits,
    *,
    device: torch.device,
    on_rung: OnRung | None = None,
) -> dict[str, tuple[dict[str, Any], tempfile.TemporaryDirectory | None]]:
    """Train and evaluate a group of packable trials (``(trial_id, config)`` pairs with one ``pack_key``) together.

    Returns, for each member, what ``run_trial`` returns for one trial: its metrics (an infeasible member's say so,
    as the trial's result would) and the directory holding its adapter (None unless it completed). With
    ``on_rung``, each active member's part-way result goes there at each rung; a member ``on_rung`` says was
    stopped leaves the group's batches from the next step.
    """
    import_training_libraries(trials[0][1].quantization)
    keys = {pack_key(t, settings) for _, t in trials}
    if len(keys) > 1:
        raise ValueError(f"a packed group needs one pack_key, got {len(keys)}")
    peak = PeakMemory(device)
    peak.start()
    results: dict[str, tuple[dict[str, Any], tempfile.TemporaryDirectory | None]] = {}
    members: list[Member] = []
    plans = {}
    for trial_id, trial in trials:
        refusal = packing_refusal(trial.peft_config)
        if refusal is not None:
            raise ValueError(f"trial {trial_id} cannot pack: {refusal}")
        try:
            plan = plan_trial(
                trial, settings, data.num_labels, runtime_bytes=peak.baseline_bytes(), device=device.type
            )
            check_budget(plan, settings.budget)
        except InfeasibleTrialError as err:
            results[trial_id] = ({STATUS_KEY: "infeasible", ERROR_KEY: str(err)}, None)
            continue
        plans[trial_id] = plan
        arguments = trial_arguments(trial, settings)
        members.append(
            Member(
                trial_id,
                trial,
                f"member_{len(members)}",
                trial.learning_rate,
                float(arguments.get("weight_decay", 0.0)),
                float(arguments.get("max_grad_norm", 1.0)),
            )
        )
    if not members:
        return results

    first = members[0].trial
    seed = settings.seed if first.seed is None else first.seed
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model, infeasible = load_group(members, settings, data, device)
    for member in infeasible:
        results[member.trial_id] = ({STATUS_KEY: "infeasible", ERROR_KEY: member.error}, None)
    members = [m for m in members if m not in infeasible]
    if not members:
        return results
    load_s = time.perf_counter() - t0
    for member in members:  # chaos tests only: a member's fault is its whole group's (one process)
        faults.inject(settings.faults, member.trial.candidate, device)
    shared = peak.peak_bytes()  # the base model (and the small adapters), loaded once for all members
    base_params = sum(p.numel() for p in model.parameters()) - sum(m.trainable for m in members)
    router = AdapterRouter(model)

    costs = functools.partial(
        _costs, members=members, plans=plans, peak=peak, shared=shared, load_s=load_s, base_params=base_params
    )
    figures = _train_members(model, router, members, settings, data, device, seed, on_rung, plans, costs)
    size, train_s = len(members), figures["train_s"]

    for member in members:
        if not member.active:
            continue
        t2 = time.perf_counter()
        with router.only(member.name):
            evaluation = evaluate(model, data, settings.task, settings.training.eval_batch_size, device)
        eval_s = time.perf_counter() - t2
        adapter_dir, adapter_bytes = _save(model, member.name)
        curve = dict(member.curve)
        if member.evaluations:
            curve["eval_step"] = [int(e["step"]) for e in member.evaluations]
            curve["eval_accuracy"] = [float(e["accuracy"]) for e in member.evaluations]
            curve["eval_loss"] = [float(e["eval_loss"]) for e in member.evaluations]
        metrics = {
            STATUS_KEY: "complete",
            **evaluation.metrics(),
            PREDICTIONS_KEY: evaluation.rows(),
            CURVE_KEY: curve,
            **costs(member),
            "train_time_s": train_s / size,
            "samples_per_s": figures["samples"] / size / train_s if train_s > 0 else 0.0,
            "tokens_per_s": figures["tokens"] / size / train_s if train_s > 0 else 0.0,
            "group_train_time_s": train_s,
            "group_samples_per_s": figures["samples"] / train_s if train_s > 0 else 0.0,
            "eval_time_s": eval_s,
            "rung_eval_time_s": figures["rungs_s"] / size,
            "eval_rows": len(data.eval),
            "train_steps": settings.steps,
            "adapter_bytes": adapter_bytes,
            "world_size": 1,
            "device": str(device.type),
            "node_id": node_id(),
            "cpu_allocator": heap_allocator(),
            "resumed_from_step": 0,
            **({SPEEDUP_KEY: settings.packing_speedup} if settings.packing_speedup is not None else {}),
        }
        results[member.trial_id] = (metrics, adapter_dir)
    for member in members:
        if not member.active and member.trial_id not in results:
            results[member.trial_id] = (
                {STATUS_KEY: "running", RUNG_KEY: member.evaluations[-1]["step"]},
                None,
            )
    router.remove()
    model = None
    release_accelerator_memory()
    return results


def _train_members(
    model,
    router: AdapterRouter,
    group: list[Member],
    settings: TrialSettings,
    data: TokenizedSplits,
    device: torch.device,
    seed: int,
    on_rung: OnRung | None,
    plans: dict,
    costs: Callable[[Member], dict],
) -> dict[str, Any]:
    """Train these members together (one alone: by PEFT's plain forward, its adapter the model's active one), with
    their rung results to ``on_rung``; the training seconds (rung evaluations left out), rows and tokens."""
    if len(group) == 1:
        model.set_adapter(group[0].name)
    with tempfile.TemporaryDirectory(prefix="trainer-") as output_dir:
        args = training_arguments(
            group[0].trial, settings, data, output_dir=output_dir, seed=seed, device=device
        )
        args.max_grad_norm = 0.0  # each member's own clipping (PackedTrainer._clip)
        collator = PackedCollator(group, data.pad_token_id)
        callbacks: list = [MemberCurves(group)]
        rung_data = dataclasses.replace(data, eval=data.eval[: settings.rung_eval_size])
        timer = {"started": 0.0, "rungs": 0.0}

        def rung(step: int) -> None:
            if on_rung is None or step not in settings.rungs or step >= settings.steps:
                return
            t = time.perf_counter()
            for member in [m for m in group if m.active]:
                with router.only(member.name), generic_4bit_cpu_path(model):
                    partial = evaluate(
                        model, rung_data, settings.task, settings.training.eval_batch_size, device
                    )
                metrics = partial.metrics()
                member.evaluations.append({"step": step, **metrics})
                member.active = on_rung(
                    member.trial_id,
                    {
                        STATUS_KEY: "running",
                        RUNG_KEY: step,
                        **metrics,
                        **costs(member),
                        "train_time_s": (t - timer["started"] - timer["rungs"]) / len(group),
                        "adapter_bytes": plans[member.trial_id].adapter_bytes,
                        "train_steps": step,
                        "eval_rows": len(rung_data.eval),
                    },
                )
            model.train()
            timer["rungs"] += time.perf_counter() - t

        if on_rung is not None:
            callbacks.append(StepCallback(rung))
        trainer = PackedTrainer(
            model=model,
            args=args,
            train_dataset=data.train,
            data_collator=collator,
            callbacks=callbacks,
            members=group,
            router=router,
            task=settings.task,
        )
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for printer in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(printer)
        timer["started"] = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - timer["started"] - timer["rungs"]
        trainer = None  # the optimizer state: freed before the evaluations
    return {
        "train_s": train_s,
        "rungs_s": timer["rungs"],
        "samples": collator.samples,
        "tokens": collator.tokens,
    }


def packing_speedup(
    model,
    router: AdapterRouter,
    members: list[Member],
    data: TokenizedSplits,
    settings: TrialSettings,
    device: torch.device,
) -> float:
    """How much cheaper a training row is packed than alone on this device: the seconds of each member's own
    forward and backward on the first training micro-batch (PEFT's plain forward, its adapter active), summed,
    over the seconds of one packed step of them all. After an untimed pass (allocators and kernels warm up), each
    is timed twice, in both orders, and the fastest counts (another process's burst only slows a pass down). No
    weight changes and the random state is put back."""
    rows = [data.train[i] for i in range(min(len(data.train), settings.micro_batch_size()))]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    model.train()

    def step(group: list[Member]) -> float:
        batch = PackedCollator(group, data.pad_token_id)(rows)
        route = batch.pop(ROUTE).tolist()
        labels = batch.pop("labels").to(device)
        inputs = {k: v.to(device) for k, v in batch.items()}
        if len(group) == 1:
            model.set_adapter(group[0].name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        router.names = [group[i].name for i in route] if len(group) > 1 else None
        try:
            logits = model(**inputs).logits
        finally:
            router.names = None
        index = torch.tensor(route, device=device)
        loss = sum(member_loss(logits[index == i], labels[index == i], settings.task) for i in set(route))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t
        model.zero_grad(set_to_none=True)
        return seconds

    try:
        times: dict[str, list[float]] = {"packed": [], "alone": []}
        for rep in range(3):  # a pass to warm up, then two timed, in both orders; the fastest of each counts
            first, second = ("packed", "alone") if rep % 2 == 0 else ("alone", "packed")
            for arm in (first, second):
                seconds = step(members) if arm == "packed" else sum(step([m]) for m in members)
                if rep:
                    times[arm].append(seconds)
        packed, alone = min(times["packed"]), min(times["alone"])
    finally:
        model.base_model.set_requires_grad([m.name for m in members], True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return alone / packed if packed > 0 else 0.0


def measure_packing(
    settings: TrialSettings, data: TokenizedSplits, quantization: str, *, device: torch.device
) -> float:
    """``packing_speedup`` on this device for a group of ``settings.packing`` LoRA adapters (r 8 on every linear
    layer, the search's micro-batch and sequence length) on the base model at this quantization level: how much
    cheaper a training row is packed than alone. What an adapter adds to a step is small beside its base model's
    forward and backward, so one representative stands for the search's LoRA trials."""
    import_training_libraries(quantization)
    lora = {
        "peft_type": "LORA",
        "task_type": TASK_TYPES[settings.task],
        "r": 8,
        "lora_alpha": 16,
        "target_modules": "all-linear",
    }
    trial = TrialConfig("lora", quantization, lora, 1e-4)
    members = [Member(f"m{i}", trial, f"member_{i}", 1e-4, 0.0, 1.0) for i in range(settings.packing)]
    torch.manual_seed(settings.seed)
    model, refused = load_group(members, settings, data, device)
    if refused:
        raise ValueError(f"PEFT refused the measuring adapter: {refused[0].error}")
    router = AdapterRouter(model)
    try:
        return packing_speedup(model, router, members, data, settings, device)
    finally:
        router.remove()
        model = None
        release_accelerator_memory()


def load_group(members: list[Member], settings: TrialSettings, data: TokenizedSplits, device: torch.device):
    """The base model once, then each member's adapter under its name, each from the random state the base model
    left (as it would be initialised alone); all of them trainable. Members PEFT refuses come back apart."""
    from peft import get_peft_config, get_peft_model

    t = settings.training
    base = load_base_model(
        settings.model_path,
        settings.task,
        num_labels=data.num_labels,
        quantization=members[0].trial.quantization,
        device=device,
        precision=t.precision,
        pad_token_id=data.pad_token_id,
        revision=settings.revision,
        gradient_checkpointing=t.gradient_checkpointing,
    )
    state = torch.get_rng_state()
    model, refused = None, []
    for member in members:
        torch.set_rng_state(state)
        try:
            config = get_peft_config(dict(member.trial.peft_config))
            if model is None:
                model = get_peft_model(base, config, adapter_name=member.name)
            else:
                model.add_adapter(member.name, config)
        except (ValueError, TypeError, NotImplementedError, KeyError) as err:
            member.error = f"{type(err).__name__}: {err}"
            refused.append(member)
    kept = [m for m in members if m not in refused]
    if model is None:
        return base, refused
    model.base_model.set_requires_grad([m.name for m in kept], True)
    for member in kept:
        member.trainable = sum(p.numel() for n, p in model.named_parameters() if member.owns(n))
    model.train()
    return model, refused


def _costs(
    member: Member,
    *,
    members: list[Member],
    plans: dict,
    peak: PeakMemory,
    shared: int,
    load_s: float,
    base_params: int,
) -> dict:
    """What the member costs: its own parameter counts; of the group's measured peak memory, the part loaded once
    for all (the base model, measured when loaded) and an even share of the rest (optimizer states, activations:
    what each member adds), so a member's figure is near what it would take alone; the group's peak beside it, and
    its plan. The load time is shared evenly."""
    group_peak = peak.peak_bytes()
    return {
        "trainable_params": member.trainable,
        "total_params": base_params + member.trainable,
        "peak_memory_bytes": shared + (group_peak - shared) // len(members),
        "group_peak_memory_bytes": group_peak,
        "est_group_peak_memory_bytes": group_peak_bytes([plans[m.trial_id] for m in members]),
        "est_peak_memory_bytes": plans[member.trial_id].est_peak_memory_bytes,
        "peak_memory_kind": peak.kind,
        "load_time_s": load_s / len(members),
        "group_size": len(members),
    }


def _save(model, name: str) -> tuple[tempfile.TemporaryDirectory, int]:
    """One member's adapter in a temporary directory, as a trial alone saves it (PEFT writes a named adapter to a
    subdirectory of that name: its files move up)."""
    adapter_dir = tempfile.TemporaryDirectory(prefix="adapter-")
    model.save_pretrained(adapter_dir.name, selected_adapters=[name])
    saved = Path(adapter_dir.name) / name
    for path in saved.iterdir():
        path.rename(Path(adapter_dir.name) / path.name)
    saved.rmdir()
    return adapter_dir, (Path(adapter_dir.name) / "adapter_model.safetensors").stat().st_size

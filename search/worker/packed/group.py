"""Packed trials: several LoRA-family trials trained at once on one base model, by one ``transformers.Trainer``.

A search trains many adapters on the same frozen base model, each at the small batch its config asks for. Where the
device is under-filled at that batch (a GPU at a LoRA trial's batch), one step over K trials' micro-batches together
costs less than K steps; where it is full (2 CPU cores at batch 16), it costs the same. So a group of K trials loads
the base model once, adds each trial's adapter under its own name, and trains them all in each step:

- the step's batch is each member's own micro-batch, one after the other; each row goes through its member's adapter
  only (``AdapterRouter``: a LoRA linear layer's base output once, each member's adapter output added to its rows'
  slice; other adapted layers by PEFT's mixed-adapter-batch forward);
- the loss is the sum of the members' own losses (each the mean over its own rows), so each adapter's gradient is
  that of its own loss: the adapters share no parameter and the base model is frozen;
- the optimizer holds each member's parameters in its own groups, with its own learning rate and weight decay; the
  scheduler (one ``LambdaLR`` factor for all groups, as the Trainer builds it) scales each group's own rate, so each
  member follows its own schedule; each member's gradients are clipped to its own ``max_grad_norm``;
- members share the search's seed and micro-batch size, so they see the same rows in the same order, and each
  adapter is initialised from the random state the base model left, as it would be alone.

With ``search.packing: auto`` the search first measures whether packing pays on the workers' device
(``search.worker.packed.auto``: one packed step of K LoRA adapters against each adapter's step alone) and packs only
where a packed row is at least ``PACKING_PAYS`` times cheaper.

Trained so, a member's adapter equals the one it would get alone (``tests/search/worker/packed/test_packing.py``),
dropout aside:
dropout masks are drawn for the whole packed batch, so with dropout a member's run is a different draw from the
same distribution. Which configs can pack, and with which others, is ``packing_refusal`` and ``pack_key``.
"""

from __future__ import annotations

import functools
import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch
from peft import get_peft_config, get_peft_model
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import SaveStrategy

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.results.records import ERROR_KEY, RUNG_KEY, STATUS_KEY
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker import faults
from peft_search.search.worker.environment import import_training_libraries
from peft_search.search.worker.memory import PeakMemory, release_accelerator_memory
from peft_search.search.worker.packed.life import GroupLife, GroupParts, OnDone, OnRung, Take
from peft_search.search.worker.packed.plan import group_peak_bytes, packing_refusal
from peft_search.search.worker.packed.router import AdapterRouter
from peft_search.search.worker.packed.trainer import Member, PackedTrainer
from peft_search.search.worker.steps import cost_metrics, load_base, planned
from peft_search.search.worker.trainer import training_arguments, trial_arguments

PER_MEMBER = ("learning_rate", "weight_decay", "max_grad_norm")
"""``TrainingArguments`` fields each member of a group keeps its own value of; members agree on all others."""
OPEN_ENDED = 1_000_000
"""A group that takes new members trains up to this many times a member's steps (it stops once none is left)."""
__all__ = ["OnDone", "OnRung", "Take", "add_adapter", "load_group", "pack_key", "run_group"]


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
    take: Take | None = None,
    on_done: OnDone | None = None,
) -> dict[str, tuple[dict[str, Any], tempfile.TemporaryDirectory | None]]:
    """Train and evaluate a group of packable trials (``(trial_id, config)`` pairs with one ``pack_key``) together.

    Returns, for each member, what ``run_trial`` returns for one trial: its metrics (an infeasible member's say so,
    as the trial's result would) and the directory holding its adapter (None unless it completed). With
    ``on_rung``, each active member's part-way result goes there at each rung; a member ``on_rung`` says was
    stopped leaves the group's batches from the next step. With ``take``, the slots members free (stopped, or done)
    go to new members ``take`` gives, each training from the step it joins as it would alone; with ``on_done``,
    each member's result goes there as soon as it is known (its adapter directory with it, not in the return).
    """
    results: dict[str, tuple[dict[str, Any], tempfile.TemporaryDirectory | None]] = {}

    def done(trial_id: str, metrics: dict[str, Any], adapter_dir) -> None:
        results[trial_id] = (metrics, adapter_dir if on_done is None else None)
        if on_done is not None:
            on_done(trial_id, metrics, adapter_dir)

    import_training_libraries(trials[0][1].quantization)
    keys = {pack_key(t, settings) for _, t in trials}
    if len(keys) > 1:
        raise ValueError(f"a packed group needs one pack_key, got {len(keys)}")
    peak = PeakMemory(device)
    peak.start()
    plans: dict[str, Any] = {}
    names = (f"member_{n}" for n in itertools.count())
    planned = [
        _planned(trial_id, trial, next(names), settings, data, device, peak, plans, done)
        for trial_id, trial in trials
    ]
    members = [m for m in planned if m is not None]
    if not members:
        return results

    first = members[0].trial
    seed = settings.seed if first.seed is None else first.seed
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model, infeasible, init_rng = load_group(members, settings, data, device)
    for member in infeasible:
        done(member.trial_id, {STATUS_KEY: "infeasible", ERROR_KEY: member.error}, None)
    members = [m for m in members if m not in infeasible]
    if not members:
        return results
    for member in members:
        member.load_s = (time.perf_counter() - t0) / len(members)
    for member in members:  # chaos tests only: a member's fault is its whole group's (one process)
        faults.inject(settings.faults, member.trial.candidate, device)
    shared = peak.peak_bytes()  # the base model (and the small adapters), loaded once for all members
    base_params = sum(p.numel() for p in model.parameters()) - sum(m.trainable for m in members)
    router = AdapterRouter(model)

    def admit(trial_id: str, trial: TrialConfig, step: int, live: list[str]) -> Member | None:
        """A member joining at ``step``: planned and checked as any, its adapter initialised as it would be alone."""
        if pack_key(trial, settings) not in keys:
            raise ValueError(f"trial {trial_id} cannot join this group: another pack_key")
        member = _planned(trial_id, trial, next(names), settings, data, device, peak, plans, done)
        if member is None:
            return None
        member.start = step
        t = time.perf_counter()
        if not add_adapter(model, member, init_rng, live):
            done(trial_id, {STATUS_KEY: "infeasible", ERROR_KEY: member.error}, None)
            return None
        router.attach(model)
        faults.inject(settings.faults, trial.candidate, device)
        member.load_s = time.perf_counter() - t
        return member

    costs = functools.partial(_costs, plans=plans, peak=peak, shared=shared, base_params=base_params)
    parts = GroupParts(model, router, settings, data, device, plans, costs, admit, done, on_rung, take)
    trainer_members = _train_members(parts, members, seed)
    for member in trainer_members:
        if member.trial_id not in results:  # stopped at a rung: its trial ended there
            results[member.trial_id] = (
                {STATUS_KEY: "running", RUNG_KEY: member.evaluations[-1]["step"]},
                None,
            )
    router.remove()
    model = None
    release_accelerator_memory()
    return results


def _planned(trial_id, trial, name, settings, data, device, peak, plans, done) -> Member | None:
    """The member for this trial, its plan checked against the budget (None: infeasible, said to ``done``)."""
    refusal = packing_refusal(trial.peft_config)
    if refusal is not None:
        raise ValueError(f"trial {trial_id} cannot pack: {refusal}")
    try:
        plans[trial_id] = planned(trial, settings, data.num_labels, peak, device)
    except InfeasibleTrialError as err:
        done(trial_id, {STATUS_KEY: "infeasible", ERROR_KEY: str(err)}, None)
        return None
    arguments = trial_arguments(trial, settings)
    return Member(
        trial_id,
        trial,
        name,
        trial.learning_rate,
        float(arguments.get("weight_decay", 0.0)),
        float(arguments.get("max_grad_norm", 1.0)),
    )


def _train_members(parts: GroupParts, members: list[Member], seed: int) -> list[Member]:
    """Train the group in one Trainer (one member alone: by PEFT's plain forward, its adapter the model's active
    one) until no member is left in it; every member it had."""
    settings, data = parts.settings, parts.data
    with tempfile.TemporaryDirectory(prefix="trainer-") as output_dir:
        args = training_arguments(
            members[0].trial, settings, data, output_dir=output_dir, seed=seed, device=parts.device
        )
        args.max_grad_norm = 0.0  # each member's own clipping (PackedTrainer._clip)
        args.save_strategy = SaveStrategy.NO  # a member's adapter is saved when it is done
        if parts.take is not None:  # members join while it trains: it trains until none is left
            args.max_steps = settings.steps * OPEN_ENDED
        life = GroupLife(parts)
        trainer = PackedTrainer(
            model=parts.model,
            args=args,
            train_dataset=data.train,
            data_collator=list,  # each member's rows as they are: padded together when packed (compute_loss)
            callbacks=[life],
            members=members,
            router=parts.router,
            task=settings.task,
            steps=settings.steps,
            pad_token_id=data.pad_token_id,
        )
        life.trainer = trainer
        for printer in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(printer)
        trainer.train()
        everyone = trainer.members
        trainer = None  # the optimizer state: freed
    return everyone


def load_group(members: list[Member], settings: TrialSettings, data: TokenizedSplits, device: torch.device):
    """The base model once, then each member's adapter under its name, each from the random state the base model
    left (as it would be initialised alone); all of them trainable. Members PEFT refuses come back apart, and so
    does that random state (``add_adapter`` initialises a member joining later from it)."""
    base = load_base(settings, data, members[0].trial.quantization, device)
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
        return base, refused, state
    model.base_model.set_requires_grad([m.name for m in kept], True)
    for member in kept:
        member.trainable = sum(p.numel() for n, p in model.named_parameters() if member.owns(n))
    model.train()
    return model, refused, state


def add_adapter(model, member: Member, init_rng: torch.Tensor, live: list[str]) -> bool:
    """A member joining a group that trains: its adapter initialised from the random state the base model left
    (``load_group``'s), as it would be alone, and trainable beside the ``live`` ones; False if PEFT refuses it
    (``member.error`` says why). The group's own random state is untouched."""
    outside = torch.get_rng_state()
    torch.set_rng_state(init_rng)
    try:
        model.add_adapter(member.name, get_peft_config(dict(member.trial.peft_config)))
    except (ValueError, TypeError, NotImplementedError, KeyError) as err:
        member.error = f"{type(err).__name__}: {err}"
        return False
    finally:
        torch.set_rng_state(outside)
    model.base_model.set_requires_grad([*live, member.name], True)
    member.trainable = sum(p.numel() for n, p in model.named_parameters() if member.owns(n))
    return True


def _costs(
    member: Member, live: list[Member], *, plans: dict, peak: PeakMemory, shared: int, base_params: int
) -> dict:
    """What the member costs: its own parameter counts; of the group's measured peak memory, the part loaded once
    for all (the base model, measured when loaded) and an even share of the rest (optimizer states, activations:
    what each member adds) among the most members it trained beside, so a member's figure is near what it would take
    alone; the group's peak beside it, and the plan of the group it trains in now. Its training time is its share of
    the group's steps, its rows per second those of the group's seconds while it was in it; its load time is its
    share of the group's load, or its adapter's if it joined later."""
    group_peak = peak.peak_bytes()
    own = cost_metrics(
        trainable=member.trainable,
        total=base_params + member.trainable,
        plan=plans[member.trial_id],
        peak_bytes=shared + (group_peak - shared) // member.most_members,
        peak_kind=peak.kind,
        load_s=member.load_s,
        train_s=member.train_s,
        samples=member.samples,
        tokens=member.tokens,
        seconds=member.group_s,
    )
    return {
        **own,
        "group_peak_memory_bytes": group_peak,
        "est_group_peak_memory_bytes": group_peak_bytes([plans[m.trial_id] for m in live]),
        "group_size": member.most_members,
    }

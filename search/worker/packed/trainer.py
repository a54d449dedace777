"""A packed group's training (``search.worker.packed.group``): its members, and the Trainer that gives each member
its own rows, loss, optimizer groups, learning rate schedule and clipping (each row goes through its own member's
adapter by ``search.worker.packed.router``).

Members may join a group that is already training (a slot a stopped or finished member freed) and leave it (stopped
at a rung, or done): each member draws its own micro-batches from its own copy of the training loader, in the order
a trial alone draws them, and follows its own schedule counted from the step it joined, so when it joined does not
change what it trains to.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import Trainer

from peft_search.search.settings.trial import TrialConfig
from peft_search.search.worker.batches import pad_batch
from peft_search.search.worker.packed.router import AdapterRouter

ROUTE = "peft_search_member"
"""The batch's column naming each row's member (its index in the group); taken off before the forward."""


@dataclasses.dataclass
class Member:
    """One trial of a group: its adapter's name in the shared model, its config and its own optimisation."""

    trial_id: str
    trial: TrialConfig
    name: str
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    active: bool = True
    """False once it is done, or the search stopped it at a rung (its rows leave the batches)."""
    start: int = 0
    """The group's step when it joined (0 for the group's first members): its own steps count from there."""
    trainable: int = 0
    error: str = ""
    """Why PEFT refused its adapter (an infeasible trial)."""
    losses: list[torch.Tensor] = dataclasses.field(default_factory=list, repr=False)
    """Its loss of each optimizer step since the curve's last point (as the Trainer logs a trial alone's)."""
    step_loss: torch.Tensor | float = dataclasses.field(default=0.0, repr=False)
    """Its loss so far in this optimizer step (the sum of its micro-batches' scaled losses)."""
    log: list[dict[str, float]] = dataclasses.field(default_factory=list)
    """Its logged steps, as the Trainer's ``log_history`` holds a trial alone's (its learning curve)."""
    grad_norm: float | None = None
    learning_rate_used: float = 0.0
    """The rate of its last optimizer step (what the Trainer logs for a step, not the next step's)."""
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    train_s: float = 0.0
    """Its share of the group's training seconds: each step's seconds split evenly among the members in it."""
    samples: int = 0
    tokens: int = 0
    group_s: float = 0.0
    """Seconds the group trained while it was in it."""
    group_rows: int = 0
    """Rows the group trained (all its members') while it was in it."""
    most_members: int = 1
    """The most members it trained beside (itself included)."""
    load_s: float = 0.0
    data: Any = dataclasses.field(default=None, repr=False)
    """Its own training rows (``MemberRows``)."""

    def owns(self, parameter_name: str) -> bool:
        return re.search(rf"\.{re.escape(self.name)}(\.|$)", parameter_name) is not None


class PackedCollator:
    """Each member's copy of one micro-batch, one after the other, padded together, with each row's member (the
    packing measurement: ``search.worker.packed.auto.packing_speedup``)."""

    def __init__(self, members: Sequence[Member], pad_token_id: int) -> None:
        self.members, self.pad_token_id = members, pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        live = [i for i, m in enumerate(self.members) if m.active]
        batch = pad_batch([r for _ in live for r in rows], self.pad_token_id)
        batch[ROUTE] = torch.tensor([i for i in live for _ in rows])
        return batch


class MemberRows:
    """A member's own micro-batches (their rows, padded when packed): a copy of the Trainer's training loader, drawn
    from its own random state (the
    one a trial alone draws its data order from), epoch after epoch as the Trainer iterates it; ``count`` is how
    many micro-batches it takes in the current optimizer step (fewer than the accumulation steps at an epoch's end,
    as the Trainer's last step of an epoch)."""

    def __init__(self, loader, rng_state: torch.Tensor) -> None:
        self.loader, self.rng_state = loader, rng_state.clone()
        self.batches: Iterator | None = None
        self.epoch, self.used, self.count = 0, 0, 0
        self.step: list[list[dict[str, Any]]] = []
        self.items: int | None = None

    def plan_step(self, accumulation: int, task: str) -> None:
        """Draw this optimizer step's micro-batches; ``items``: their answer tokens (causal LM), which the Trainer
        divides a step's loss by (its ``num_items_in_batch``), else None."""
        if self.used >= len(self.loader):
            self.epoch, self.used, self.batches = self.epoch + 1, 0, None
        self.count = min(accumulation, len(self.loader) - self.used)
        self.step = [self._draw() for _ in range(self.count)]
        self.items = None
        if task != "sequence-classification":
            self.items = sum(sum(x != -100 for x in r["labels"][1:]) for rows in self.step for r in rows)

    def next(self) -> list[dict[str, Any]]:
        return self.step.pop(0)

    def _draw(self) -> list[dict[str, Any]]:
        outside = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        try:
            if self.batches is None:
                _set_epoch(self.loader, self.epoch)
                self.batches = iter(self.loader)
            batch = next(self.batches)
        finally:
            self.rng_state = torch.get_rng_state()
            torch.set_rng_state(outside)
        self.used += 1
        return batch


def _set_epoch(loader, epoch: int) -> None:
    """As the Trainer starts an epoch: the loader's epoch, and its wrapped batch sampler's."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    inner = getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None)
    if hasattr(inner, "set_epoch"):
        inner.set_epoch(epoch)


class _Steps(torch.utils.data.IterableDataset):
    """The Trainer's own loader in a group: a marker per micro-batch, without end (members draw their rows)."""

    def __iter__(self):
        while True:
            yield {"peft_search_step": torch.zeros(())}


class MemberSchedules(torch.optim.lr_scheduler.LRScheduler):
    """Each member's learning rate schedule: the one the Trainer builds for a trial alone (``factor``), counted
    from the step the member joined (its parameter groups' ``start``)."""

    def __init__(self, optimizer, factor: Callable[[int], float]) -> None:
        self.factor = factor
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [
            g["initial_lr"] * self.factor(max(0, self.last_epoch - g["start"]))
            for g in self.optimizer.param_groups
        ]


def schedule_factor(args, steps: int) -> Callable[[int], float]:
    """The factor of the Trainer's schedule (``lr_scheduler_type``, its warmup, over ``steps``) at each step."""
    from transformers import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_scheduler(
        args.lr_scheduler_type,
        optimizer=probe,
        num_warmup_steps=args.get_warmup_steps(steps),
        num_training_steps=steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
        raise ValueError(
            f"training.lr_scheduler_type {args.lr_scheduler_type!r} cannot train in a packed group (its rate does "
            "not follow the step alone): set search.packing: off, or another schedule"
        )
    return schedule.lr_lambdas[0]


class PackedTrainer(Trainer):
    """The Trainer for a group: per-member rows, loss, optimizer groups, schedules and gradient clipping; members
    join (``add_member``) and leave (``drop_member``) between optimizer steps."""

    # Each member's loss is scaled to its own step: by its micro-batch count, or its answer tokens (``MemberRows``).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        members: list[Member],
        router: AdapterRouter,
        task: str,
        steps: int,
        pad_token_id: int,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.members, self.router, self.task, self.steps = list(members), router, task, steps
        self.pad_token_id = pad_token_id
        # The Trainer has just seeded the random state; a trial alone draws its data order from it.
        self.data_rng = torch.get_rng_state()
        self._micro = 0
        self._single: Member | None = None  # the one member training by PEFT's plain forward
        self._schedules: MemberSchedules | None = None

    def get_train_dataloader(self):
        return torch.utils.data.DataLoader(_Steps(), batch_size=None)

    def live(self) -> list[Member]:
        return [m for m in self.members if m.active]

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        groups = [g for index, m in enumerate(self.members) for g in self._groups(model, index, m)]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        self.optimizer.register_step_pre_hook(self._clip)
        return self.optimizer

    def _groups(self, model, index: int, member: Member) -> list[dict[str, Any]]:
        decay = set(self.get_decay_parameter_names(model))
        own = [(n, p) for n, p in model.named_parameters() if p.requires_grad and member.owns(n)]
        groups = [
            {
                "params": [p for n, p in own if (n in decay) == decays],
                "lr": member.learning_rate,
                "weight_decay": member.weight_decay if decays else 0.0,
                "member": index,
                "start": member.start,
            }
            for decays in (True, False)
        ]
        return [g for g in groups if g["params"]]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = self.optimizer if optimizer is None else optimizer
            self._schedules = MemberSchedules(optimizer, schedule_factor(self.args, self.steps))
            self.lr_scheduler = self._schedules
        return self.lr_scheduler

    def add_member(self, member: Member) -> None:
        """A member joining at this step (its adapter already in the model): its optimizer groups, at its schedule's
        first rate, and its own rows."""
        index = len(self.members)
        self.members.append(member)
        factor = self._schedules.factor(0) if self._schedules is not None else 1.0
        for group in self._groups(self.model, index, member):
            group["initial_lr"] = group["lr"]
            group["lr"] = group["lr"] * factor
            self.optimizer.add_param_group(group)

    def drop_member(self, member: Member) -> None:
        """A member leaving (done or stopped): its optimizer groups and state go."""
        member.active = False
        index = self.members.index(member)
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for group in [g for g in inner.param_groups if g["member"] == index]:
            for p in group["params"]:
                inner.state.pop(p, None)
                p.grad = None
        inner.param_groups[:] = [g for g in inner.param_groups if g["member"] != index]
        if self._single is member:
            self._single = None

    def _clip(self, optimizer, args, kwargs) -> None:
        """Each member's gradients clipped to its own norm, as the Trainer clips a trial's alone."""
        for index, member in enumerate(self.members):
            groups = [g for g in optimizer.param_groups if g["member"] == index]
            if groups:
                member.learning_rate_used = float(groups[0]["lr"])
            params = [p for g in groups for p in g["params"] if p.grad is not None]
            if params and member.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, member.max_grad_norm)
                member.grad_norm = float(norm)

    def _rows(self, member: Member) -> MemberRows:
        if member.data is None:
            member.data = MemberRows(Trainer.get_train_dataloader(self), self.data_rng)
        return member.data

    def training_step(self, *args, **kwargs):
        try:
            return super().training_step(*args, **kwargs)
        finally:  # the rows' routing held through the backward pass (gradient checkpointing runs forwards there)
            self.router.names = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        accumulation = self.args.gradient_accumulation_steps
        live = self.live()
        if self._micro == 0:
            for member in live:
                self._rows(member).plan_step(accumulation, self.task)
        micro, self._micro = self._micro, (self._micro + 1) % accumulation
        parts = [(m, m.data.next()) for m in live if m.data.count > micro]
        if not parts:  # every member's epoch ended before this micro-batch
            zero = torch.zeros((), device=self.args.device, requires_grad=True)
            return (zero, None) if return_outputs else zero
        batch = pad_batch([r for _, rows in parts for r in rows], self.pad_token_id)
        route = torch.tensor([i for i, (_, rows) in enumerate(parts) for _ in rows])
        inputs = self._prepare_inputs(batch)
        labels = inputs.pop("labels")
        self._route(live, [m.name for m, rows in parts for _ in rows])
        outputs = model(**inputs)
        total = outputs.logits.new_zeros(())
        route = route.to(outputs.logits.device)
        for index, (member, rows) in enumerate(parts):
            mine = route == index
            if member.data.items is None:  # a mean over its rows, for each of the step's micro-batches
                loss = member_loss(outputs.logits[mine], labels[mine], self.task) / member.data.count
            else:  # over the answer tokens of all the step's micro-batches, as the model's loss alone
                loss = member_loss(outputs.logits[mine], labels[mine], self.task, "sum") / max(
                    member.data.items, 1
                )
            member.step_loss = member.step_loss + loss.detach()
            member.samples += len(rows)
            member.tokens += sum(len(r["input_ids"]) for r in rows)
            total = total + loss
        return (total, outputs) if return_outputs else total

    def forget_single(self) -> None:
        """The model's active adapter was changed from outside (an adapter deleted): set it again when needed."""
        self._single = None

    def _route(self, live: list[Member], names: list[str]) -> None:
        """One member in the group: PEFT's plain forward through its adapter (the model's active one), as a trial
        alone; more: each row through its own (the router)."""
        if len(live) == 1:
            if self._single is not live[0]:
                self.model.set_adapter(live[0].name)  # it alone is trainable now: no other member is live
                self._single = live[0]
            self.router.names = None
            return
        if self._single is not None:
            self._single = None
            self.model.base_model.set_requires_grad([m.name for m in live], True)
        self.router.names = names


def member_loss(
    logits: torch.Tensor, labels: torch.Tensor, task: str, reduction: str = "mean"
) -> torch.Tensor:
    """A member's loss on its rows, as its model computes it alone: cross-entropy over the rows (classification) or
    over the answer tokens, next-token shifted (causal LM); ``reduction="sum"`` sums the answer tokens' instead."""
    if task == "sequence-classification":
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(
        shifted, labels[:, 1:].reshape(-1), ignore_index=-100, reduction=reduction
    )

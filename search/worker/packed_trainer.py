"""The parts of a packed group's training (``search.worker.packing``): its members, the router that sends each row
through its member's adapter, the collator that packs the members' micro-batches, and the Trainer that gives each
member its own loss, optimizer groups, learning rate and clipping."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from peft_search.search.settings.trial import TrialConfig
from peft_search.search.worker.batches import pad_batch

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
    """False once the search stopped it at a rung (its rows leave the batches) or it failed."""
    trainable: int = 0
    error: str = ""
    """Why PEFT refused its adapter (an infeasible trial)."""
    losses: list[torch.Tensor] = dataclasses.field(default_factory=list, repr=False)
    curve: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    grad_norm: float | None = None
    learning_rate_used: float = 0.0
    """The rate of its last optimizer step (what the Trainer logs for a step, not the next step's)."""
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def owns(self, parameter_name: str) -> bool:
        return re.search(rf"\.{re.escape(self.name)}(\.|$)", parameter_name) is not None


def _copy_output(module, args, output):
    return output.clone()


class AdapterRouter:
    """Sends each row of a batch through its own adapter: PEFT's mixed-adapter-batch forward, by the pre-forward
    hooks PEFT registers when ``adapter_names`` is passed (which PEFT allows at inference only; the LoRA layers'
    mixed-batch forward is differentiable, so it trains too). ``names`` is a name per row, or one name for all."""

    def __init__(self, model) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.names: str | list[str] | None = None
        routed = [m for m in model.modules() if isinstance(m, (LoraLayer, AuxiliaryTrainingWrapper))]
        self._handles = [module.register_forward_pre_hook(self._hook, with_kwargs=True) for module in routed]
        # The mixed-batch forward adds each adapter's output into the base layer's output in place; a bitsandbytes
        # layer's output is a view made inside its autograd Function, which autograd refuses to see changed in
        # place (PEFT's own single-adapter 4-bit forward clones it for the same reason): give it a copy.
        self._handles += [
            module.base_layer.register_forward_hook(_copy_output)
            for module in routed
            if isinstance(module, LoraLayer) and type(module.base_layer).__module__.startswith("bitsandbytes")
        ]

    def _hook(self, module, args, kwargs):
        if self.names is None:
            return args, kwargs
        rows = (args[0] if args else next(iter(kwargs.values()))).shape[0]
        names = [self.names] * rows if isinstance(self.names, str) else self.names
        return args, {**kwargs, "adapter_names": names}

    @contextlib.contextmanager
    def only(self, name: str) -> Iterator[None]:
        """Every row through one member's adapter (its evaluations)."""
        before, self.names = self.names, name
        try:
            yield
        finally:
            self.names = before

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class PackedCollator:
    """Each member's copy of the micro-batch, one after the other, padded together, with each row's member."""

    def __init__(self, members: Sequence[Member], pad_token_id: int) -> None:
        self.members, self.pad_token_id = members, pad_token_id
        self.samples = self.tokens = 0
        """Rows and real tokens served, over all members: the group's throughput."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        live = [i for i, m in enumerate(self.members) if m.active]
        batch = pad_batch([r for _ in live for r in rows], self.pad_token_id)
        batch[ROUTE] = torch.tensor([i for i in live for _ in rows])
        self.samples += batch["input_ids"].shape[0]
        self.tokens += int(batch["attention_mask"].sum())
        return batch


class PackedTrainer(Trainer):
    """The Trainer for a group: per-member loss, optimizer groups, learning rates and gradient clipping."""

    loss_is_scaled_for_ga = (
        False  # each member's loss is a mean over its micro-batch's rows (or answer tokens)
    )

    def __init__(self, *args, members: list[Member], router: AdapterRouter, task: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.members, self.router, self.task = members, router, task

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = []
        for index, member in enumerate(self.members):
            own = [(n, p) for n, p in named if member.owns(n)]
            for decays in (True, False):
                groups.append(
                    {
                        "params": [p for n, p in own if (n in decay) == decays],
                        "lr": member.learning_rate,
                        "weight_decay": member.weight_decay if decays else 0.0,
                        "member": index,
                    }
                )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        self.optimizer.register_step_pre_hook(self._clip)
        return self.optimizer

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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        route = inputs.pop(ROUTE)
        live = torch.tensor([m.active for m in self.members], device=route.device)[route]
        if not bool(live.all()):  # a member stopped after this batch was made: its rows go
            inputs = {k: v[live] for k, v in inputs.items()}
            route = route[live]
        labels = inputs.pop("labels")
        # One member: PEFT's plain forward through the model's active adapter (set to it), as a trial alone.
        self.router.names = [self.members[i].name for i in route.tolist()] if len(self.members) > 1 else None
        try:
            outputs = model(**inputs)
        finally:
            self.router.names = None
        total = outputs.logits.new_zeros(())
        for index in route.unique().tolist():
            rows = route == index
            loss = member_loss(outputs.logits[rows], labels[rows], self.task)
            self.members[index].losses.append(loss.detach())
            total = total + loss
        return (total, outputs) if return_outputs else total


def member_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """A member's loss on its rows, as its model computes it alone: cross-entropy over the rows (classification) or
    over the answer tokens, next-token shifted (causal LM)."""
    if task == "sequence-classification":
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)


class MemberCurves(TrainerCallback):
    """Each member's learning curve: its mean loss since the last log, its learning rate and gradient norm."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        for member in self.members:
            if not member.losses:
                continue
            loss = float(torch.stack(member.losses).mean())
            member.losses.clear()
            if not torch.isfinite(torch.tensor(loss)):
                raise FloatingPointError(f"training loss became non-finite by step {state.global_step}")
            curve = member.curve
            curve.setdefault("step", []).append(int(state.global_step))
            curve.setdefault("loss", []).append(loss)
            curve.setdefault("learning_rate", []).append(member.learning_rate_used)
            if member.grad_norm is not None:
                curve.setdefault("grad_norm", []).append(member.grad_norm)

"""A packed group's life inside its Trainer (``search.worker.packed.group.run_group``), after each optimizer step: each
member's learning curve and rung evaluations; at a member's last step its held-out evaluation, its saved adapter
and its result (``on_done``); members that are done or that the search stopped leave; new members take the slots
they freed (``take``), so a group keeps training while the search has trials for it."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.packed.router import AdapterRouter
from peft_search.search.worker.packed.trainer import Member
from peft_search.search.worker.steps import (
    check_finite,
    evaluate_final,
    evaluate_rung,
    final_result,
    rung_result,
    save_adapter,
)
from peft_search.search.worker.trainer import learning_curve

OnRung = Callable[[str, dict[str, Any]], bool]
"""``on_rung(member, result)``: a member's part-way result; False when the search stopped that member there."""
OnDone = Callable[[str, dict[str, Any], "tempfile.TemporaryDirectory | None"], None]
"""``on_done(member, metrics, adapter_dir)``: a member's final result (complete, or infeasible), as it is known."""
Take = Callable[[list[str]], list[tuple[str, TrialConfig]]]
"""``take(live)``: new members for this group (``live`` are the members training in it now), possibly none."""
SPEEDUP_KEY = "packing_speedup"
"""In a packed trial's results (``auto``): how many times as fast a row trains packed as alone, as the search
measured before its trials."""
TAKE_EVERY_S = 1.0
"""Seconds between two asks for new members while a group has room (each ask is a call to the coordinator)."""


@dataclasses.dataclass
class GroupParts:
    """What a group's life needs besides its Trainer: the model and router, the search's settings and data, and
    how members' costs and final results are made and where they go."""

    model: Any
    router: AdapterRouter
    settings: TrialSettings
    data: TokenizedSplits
    device: torch.device
    plans: dict[str, Any]
    """Each member's plan (``search.worker.costs.plan_trial``), by trial id."""
    costs: Callable[[Member, list[Member]], dict[str, Any]]
    """``costs(member, live)``: what the member costs so far, beside the ``live`` members."""
    admit: Callable[[str, TrialConfig, int, list[str]], Member | None]
    """``admit(trial_id, trial, step, live)``: a new member joining at ``step`` beside the ``live`` adapters, its
    adapter loaded (None: infeasible, its result already given to ``on_done``)."""
    on_done: OnDone
    on_rung: OnRung | None = None
    take: Take | None = None


class GroupLife(TrainerCallback):
    """The group's members between optimizer steps (the Trainer is set once built: ``trainer``)."""

    def __init__(self, parts: GroupParts) -> None:
        self.parts = parts
        self.trainer = None
        self.train_s = 0.0
        self._t0 = 0.0
        self._asked = -math.inf
        self._rows = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        p, steps = self.parts, self.parts.settings.steps
        live = self.trainer.live()
        took = time.perf_counter() - self._t0
        self.train_s += took
        rows = sum(m.samples for m in self.trainer.members)
        for member in live:
            member.losses.append(member.step_loss)
            member.step_loss = 0.0
            member.train_s += took / len(live)
            member.group_s += took
            member.group_rows += rows - self._rows
            member.most_members = max(member.most_members, len(live))
        self._rows = rows
        for member in live:
            step = state.global_step - member.start
            self._log(member, step, args)
            if step >= steps:
                self._finish(member)
            elif p.on_rung is not None and step in p.settings.rungs:
                self._rung(member, step)
        self._refill(state.global_step, left=len(live) > len(self.trainer.live()))
        if not self.trainer.live():
            control.should_training_stop = True
        p.model.train()
        return control

    def _refill(self, step: int, left: bool) -> None:
        """New members for the free slots, asked for when one just left, or at most every ``TAKE_EVERY_S``."""
        p = self.parts
        if p.take is None or len(self.trainer.live()) >= p.settings.packing:
            return
        if not left and time.monotonic() - self._asked < TAKE_EVERY_S:
            return
        self._asked = time.monotonic()
        for trial_id, trial in p.take([m.trial_id for m in self.trainer.live()]):
            member = p.admit(trial_id, trial, step, [m.name for m in self.trainer.live()])
            if member is not None:
                self.trainer.add_member(member)

    def _log(self, member: Member, step: int, args) -> None:
        """The member's curve where the Trainer logs a trial alone: every ``logging_steps`` of its own steps (the
        entries the Trainer's ``log_history`` holds, for ``learning_curve``)."""
        every = args.logging_steps
        every = math.ceil(self.parts.settings.steps * every) if every < 1 else int(every)
        if not (step % every == 0 or (step == 1 and args.logging_first_step)) or not member.losses:
            return
        loss = float(torch.stack(member.losses).mean())
        member.losses.clear()
        check_finite(loss, step)
        entry = {"step": step, "loss": loss, "learning_rate": member.learning_rate_used}
        if member.grad_norm is not None:
            entry["grad_norm"] = member.grad_norm
        member.log.append(entry)

    def _rung(self, member: Member, step: int) -> None:
        p, t = self.parts, time.perf_counter()
        with p.router.only(member.name):
            evaluation = evaluate_rung(p.model, p.data, p.settings, p.device)
        seconds = time.perf_counter() - t
        member.evaluations.append({"step": step, **evaluation.metrics(), "seconds": seconds})
        result = rung_result(
            step,
            evaluation,
            p.costs(member, self.trainer.live()),
            plan=p.plans[member.trial_id],
            rung_eval_s=sum(e["seconds"] for e in member.evaluations),
        )
        if not p.on_rung(member.trial_id, result):
            self._leave(member)

    def _finish(self, member: Member) -> None:
        p = self.parts
        with p.router.only(member.name):
            evaluation, eval_s = evaluate_final(p.model, p.data, p.settings, p.device)
        adapter_dir, adapter_bytes = save_adapter(p.model, member.name)
        speedup = p.settings.packing_speedup
        metrics = final_result(
            evaluation,
            learning_curve(member.log, member.evaluations),
            p.costs(member, self.trainer.live()),
            settings=p.settings,
            device=p.device,
            eval_s=eval_s,
            rung_eval_s=sum(e["seconds"] for e in member.evaluations),
            adapter_bytes=adapter_bytes,
            group_train_time_s=member.group_s,
            group_samples_per_s=member.group_rows / member.group_s if member.group_s > 0 else 0.0,
            group_start_step=member.start,
            **({SPEEDUP_KEY: speedup} if speedup is not None else {}),
        )
        self._leave(member)
        p.on_done(member.trial_id, metrics, adapter_dir)

    def _leave(self, member: Member) -> None:
        """The member's optimizer state and adapter go (the adapter stays while it is the model's last)."""
        self.trainer.drop_member(member)
        model = self.parts.model
        if len(model.peft_config) > 1:
            live = [m.name for m in self.trainer.live()]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "was active which is now deleted": the next is set below
                model.delete_adapter(member.name)
                model.set_adapter(live[0] if live else next(iter(model.peft_config)))
            self.trainer.forget_single()
            if live:
                model.base_model.set_requires_grad(live, True)

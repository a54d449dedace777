"""Packing (``search.packing``): LoRA-family trials trained several at a time through one base model, each still
its own Tune and Optuna trial. A wing apart: its gain is not shown yet on every device, so it stays in this folder,
measured, kept or removed in one step.

Only two places call it (an import-linter contract holds them to it): the trial's entry point
(``search.worker.trial``: ``packs``, ``train_packed``, ``PackedResources``) and the search's driver
(``search.loop.driver``: ``start_packing``, and ``packing_note`` for ``peft-search plan``). Every step a packed
member takes that a trial alone takes too (the device, the plan and budget, the base model, rung and final
evaluations, the loss check, saving the adapter, the result records) is ``search.worker.steps``; what is here is
what packing adds: which trials can pack and how a group's memory is planned (``plan``), the router that sends each
row through its own member's adapter (``router``), the members' rows, losses and optimizer groups in one Trainer
(``trainer``), a group's life between steps (``life``) and its whole run (``group``), the search's coordinator of
groups (``coordinator``), and ``auto``'s measurement of whether packing pays (``auto``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.settings.trial import TrialSettings
from peft_search.search.worker.packed.auto import decide_packing
from peft_search.search.worker.packed.coordinator import (
    PackedResources,
    packs,
    start_coordinator,
    train_packed,
)
from peft_search.search.worker.packed.plan import packing_note, packing_refusal
from peft_search.spaces.sampling import SpaceSpec, feasible_quantization


def start_packing(
    settings: TrialSettings, spec: SpaceSpec, data: TokenizedSplits, *, auto: bool, echo: bool = True
) -> tuple[TrialSettings, Any]:
    """Before the search's trials: the settings as it packs (``packing`` 1, each trial alone, where none of its
    trials can pack, or where ``auto`` measured no gain), and the coordinator of its groups (None unpacked; the
    caller keeps the handle, which keeps the actor alive)."""
    if settings.packing <= 1:
        return settings, None
    level = _level(spec)
    if level is None:
        return dataclasses.replace(settings, packing=1), None
    if auto:  # pack only where the workers' device measures a gain
        settings = decide_packing(settings, data, level, echo)
    if settings.packing <= 1:
        return settings, None
    return settings, start_coordinator(settings, data)


def _level(spec: SpaceSpec) -> str | None:
    """The quantization level ``search.packing: auto`` measures at: unquantized where the search's LoRA-family trials
    may train so, else their first level; None when none of its trials can pack."""
    levels = feasible_quantization("lora", spec.quantization) if "lora" in spec.methods else []
    levels += [c.quantization for c in spec.candidates if packing_refusal(c.peft_config) is None]
    return "none" if "none" in levels else (levels[0] if levels else None)


__all__ = ["PackedResources", "packing_note", "packs", "start_packing", "train_packed"]

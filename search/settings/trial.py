"""What a trial receives: the search's validated settings as they are, and the config Optuna sampled for it.

``TrialSettings`` is built once per search, after the model and data are prepared, and handed to Ray Tune once
(``tune.with_parameters`` puts it in the object store); every trial reads the same frozen object. Builders inside
the worker still take flat arguments, unpacked from it where they are called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peft_search.search.settings.loading import parse_config
from peft_search.search.settings.schema import Budget, Resources, SearchConfig, TrainingSettings


@dataclass(frozen=True)
class TrialSettings:
    """The validated search config, plus what preparing the search derived from it."""

    config: SearchConfig
    model_path: str
    """``model.name_or_path`` resolved to the directory or hub id to load from."""
    steps: int
    """Training steps of every trial (``training.max_steps``, or ``training.epochs`` over the training split)."""
    rungs: tuple[int, ...] = ()
    """Steps at which a trial is evaluated part-way for early stopping (empty: none)."""
    adapters_path: str = ""
    """Where each trial's adapter is saved: a local directory or a path on the search's object store."""
    packing: int = 1
    """The most trials one packed group trains (``search.packing``; 1: every trial alone)."""
    packing_speedup: float | None = None
    """What ``search.packing: auto`` measured on the workers' device before the search (``packing_speedup``; None:
    not measured)."""
    heap: Any = None
    """What CPU trials' heap allocator keeps beyond the planned tensors (``search.plan.heap.HeapModel``, measured
    before the search), added to every trial's estimate; None: nothing (GPU trials, or not measured)."""
    faults: Mapping[str, str] = field(default_factory=dict)
    """Chaos tests only (``search.worker.faults``): candidate name -> fault kind; empty normally."""

    @property
    def task(self) -> str:
        return self.config.model.task

    @property
    def revision(self) -> str | None:
        return self.config.model.revision

    @property
    def training(self) -> TrainingSettings:
        return self.config.training

    @property
    def resources(self) -> Resources:
        return self.config.resources

    @property
    def budget(self) -> Budget:
        return self.config.budget

    @property
    def seed(self) -> int:
        return self.config.search.seed

    def micro_batch_size(self, gradient_accumulation_steps: int = 1) -> int:
        """Rows per forward pass on each worker: ``batch_size`` split across workers and accumulation steps."""
        return self.training.batch_size // (self.resources.num_workers * gradient_accumulation_steps)

    @property
    def rung_eval_size(self) -> int:
        return self.config.search.early_stopping.eval_size

    def with_resources(self, **fields: Any) -> TrialSettings:
        """A copy whose ``resources`` have these fields set as the search decided them (measured threads, spare
        cores turned off), without validating the config again."""
        resources = self.config.resources.model_copy(update=fields)
        return dataclasses.replace(self, config=self.config.model_copy(update={"resources": resources}))

    def with_config(self, **sections: dict[str, Any]) -> TrialSettings:
        """A copy whose config has some sections' fields changed (validated again), e.g.
        ``with_config(budget={"max_memory": 1000})``."""

        raw = self.config.model_dump(mode="json")
        for name, values in sections.items():
            raw[name] = {**raw.get(name, {}), **values}
        return dataclasses.replace(self, config=parse_config(raw))


@dataclass(frozen=True)
class TrialConfig:
    """One trial's sampled configuration, as the search space proposed it (``spaces.DefineByRun``)."""

    method: str
    quantization: str
    peft_config: dict[str, Any]
    """In PEFT's ``adapter_config.json`` shape: ``peft.get_peft_config(peft_config)`` builds it."""
    learning_rate: float
    candidate: str = "sampled"
    seed: int | None = None
    """The training seed (weights' initialisation, data order) when it is not the search's: a seed repeat."""
    training: dict[str, Any] = field(default_factory=dict)
    """The searched ``TrainingArguments`` fields' values for this trial (``training:`` ranges and choices)."""

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TrialConfig:
        """From a Tune trial's config (which may carry other keys, e.g. the Optuna trial number)."""
        return cls(
            method=config["method"],
            quantization=config["quantization"],
            peft_config=dict(config["peft_config"]),
            learning_rate=float(config["learning_rate"]),
            candidate=config.get("candidate") or "sampled",
            seed=config.get("seed"),
            training=dict(config.get("training") or {}),
        )


def total_steps(n_train: int, batch_size: int, max_steps: int | None, epochs: float | None) -> int:
    """Training steps of a trial: ``max_steps``, or ``epochs`` passes over ``n_train`` rows in global batches."""
    import math

    if epochs is not None:
        return max(1, math.ceil(epochs * math.ceil(n_train / batch_size)))
    return int(max_steps or 1)

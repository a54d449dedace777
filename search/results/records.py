"""What a trial produced, as one typed record, and the keys a trial's reports to Tune carry.

A record's status is explicit (never inferred from missing keys or sentinel values); its metrics are keyed by the
metric registry's names; ``to_row`` / ``from_row`` are its one row in the trials table (``search.results.layout``).
Pure: no torch, no ray.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from peft_search.search.results.metrics import metrics

TrialStatus = Literal["complete", "failed", "infeasible", "stopped_early", "running"]
STATUSES: tuple[str, ...] = get_args(TrialStatus)

STATUS_KEY = "trial_status"
"""Set by the worker in what it reports: ``complete``, ``infeasible`` (with ``ERROR_KEY``), or ``running`` for a
part-way (rung) result."""
ERROR_KEY = "trial_error"
RUNG_KEY = "rung_step"
"""Set in a part-way result only: the training step a rung evaluated at (early stopping)."""
PREDICTIONS_KEY = "heldout_rows"
"""In a complete trial's result: per held-out row, its label, the prediction and whether it was right (lists)."""
CURVE_KEY = "learning_curve"
"""In a trial's result: its training loss (and learning rate, gradient norm) at each logging step, and its rung
evaluations: ``{"step": [...], "loss": [...], ..., "eval_step": [...], "eval_accuracy": [...], "eval_loss": [...]}``."""
OPTUNA_TRIAL_KEY = "optuna_trial"
"""In a trial's config: the number of the Optuna trial that proposed it."""
REPEAT_OF_KEY = "repeat_of"
"""In a seed repeat's (or a race run's) config: the trial id of the original it trains again."""
RACE_ROUND_KEY = "race_round"
"""In a race run's config (``search.race``): the round it ran in (1, 2, ...)."""

INFO_FIELDS: tuple[str, ...] = (
    "peak_memory_kind",
    "device",
    "node_id",
    "cpu_allocator",
    "cpu_threads",
    "group",
)
"""Facts about where and how a trial ran that are not metrics (text); ``cpu_threads``: a CPU trial's threads, and
when it widened onto spare cores (``resources.spare_cores``); ``group``: the packed group it trained in
(``search.packing``)."""


@dataclass(frozen=True)
class TrialResult:
    """One trial, as the trials table holds it."""

    trial_id: str
    status: TrialStatus
    method: str | None = None
    quantization: str | None = None
    learning_rate: float | None = None
    peft_config: dict[str, Any] = field(default_factory=dict)
    """The sampled adapter config, in PEFT's ``adapter_config.json`` shape."""
    training: dict[str, Any] = field(default_factory=dict)
    """The trial's values of the searched ``TrainingArguments`` fields (empty when none is searched)."""
    candidate: str | None = None
    """The explicit candidate's name, or ``sampled``."""
    optuna_trial: int | None = None
    error: str = ""
    """Why it failed or is infeasible; for a stopped trial, where and why it stopped."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Keyed by the metric registry's names (part-way values for a stopped trial)."""
    info: dict[str, str] = field(default_factory=dict)
    """``INFO_FIELDS``: the peak memory's kind, device, Ray node, heap allocator, CPU threads, packed group."""
    stopped_at_step: int | None = None
    wall_time_s: float | None = None
    """Seconds from the trial's start to its last result (Tune's ``time_total_s``)."""
    adapter_path: str | None = None
    repeat_of: str | None = None
    """A seed repeat (``search.repeats``): the trial whose config it trains again."""
    seed: int | None = None
    """A seed repeat's training seed (the search's own seed otherwise)."""
    race_round: int | None = None
    """A race run's round (``search.race``)."""
    curve: dict[str, list[float]] = field(default_factory=dict)
    """``CURVE_KEY``: the training loss over steps and the rung evaluations (complete and stopped trials)."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    @classmethod
    def from_report(
        cls,
        trial_id: str,
        status: TrialStatus,
        config: dict[str, Any],
        result: dict[str, Any],
        error: str = "",
    ) -> TrialResult:
        """A record from a Tune trial's config and its last reported result."""
        peft_config = config.get("peft_config") or {}
        keep = status in ("complete", "stopped_early")
        return cls(
            trial_id=str(trial_id),
            status=status,
            method=config.get("method"),
            quantization=config.get("quantization"),
            learning_rate=config.get("learning_rate"),
            peft_config=dict(peft_config),
            training=dict(config.get("training") or {}),
            candidate=config.get("candidate"),
            optuna_trial=config.get(OPTUNA_TRIAL_KEY),
            error=error,
            metrics={m.name: float(result[m.name]) for m in metrics() if _present(result.get(m.name))}
            if keep
            else {},
            info={k: str(result[k]) for k in INFO_FIELDS if keep and _present(result.get(k))},
            stopped_at_step=int(result[RUNG_KEY]) if status == "stopped_early" else None,
            wall_time_s=result.get("time_total_s"),
            adapter_path=result.get("checkpoint_path") if status == "complete" else None,
            repeat_of=config.get(REPEAT_OF_KEY),
            seed=config.get("seed"),
            race_round=config.get(RACE_ROUND_KEY),
            curve=dict(result.get(CURVE_KEY) or {}) if keep else {},
        )

    def to_row(self) -> dict[str, Any]:
        """The flat row of the trials table: fixed columns, then one column per metric and info field."""
        return {
            "trial_id": self.trial_id,
            "status": self.status,
            "optuna_trial": self.optuna_trial,
            "candidate": self.candidate,
            "method": self.method,
            "quantization": self.quantization,
            "learning_rate": self.learning_rate,
            "peft_type": self.peft_config.get("peft_type"),
            "peft_config": json.dumps(self.peft_config, sort_keys=True),
            "training_arguments": json.dumps(self.training, sort_keys=True),
            "error": self.error,
            "stopped_at_step": self.stopped_at_step,
            "wall_time_s": self.wall_time_s,
            "adapter_path": self.adapter_path,
            "repeat_of": self.repeat_of,
            "seed": self.seed,
            RACE_ROUND_KEY: self.race_round,
            "learning_curve": json.dumps(self.curve) if self.curve else None,
            **self.metrics,
            **self.info,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TrialResult:
        known = {m.name for m in metrics()}
        return cls(
            trial_id=str(row["trial_id"]),
            status=row["status"],
            method=_value(row.get("method")),
            quantization=_value(row.get("quantization")),
            learning_rate=_value(row.get("learning_rate")),
            peft_config=_json(row.get("peft_config")),
            training=_json(row.get("training_arguments")),
            candidate=_value(row.get("candidate")),
            optuna_trial=_int(row.get("optuna_trial")),
            error=_value(row.get("error")) or "",
            metrics={k: float(v) for k, v in row.items() if k in known and _present(v)},
            info={k: str(row[k]) for k in INFO_FIELDS if _present(row.get(k))},
            stopped_at_step=_int(row.get("stopped_at_step")),
            wall_time_s=_value(row.get("wall_time_s")),
            adapter_path=_value(row.get("adapter_path")),
            repeat_of=_value(row.get("repeat_of")),
            seed=_int(row.get("seed")),
            race_round=_int(row.get(RACE_ROUND_KEY)),
            curve=_json(row.get("learning_curve")),
        )


def _json(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) and value else {}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _value(value: Any) -> Any:
    return value if _present(value) else None


def _int(value: Any) -> int | None:
    return int(value) if _present(value) else None


def metric_columns(columns: list[str]) -> list[str]:
    """The registry's metrics among a table's columns, in registry order."""
    have = set(columns)
    return [m.name for m in metrics() if m.name in have]


__all__ = [
    "CURVE_KEY",
    "ERROR_KEY",
    "INFO_FIELDS",
    "OPTUNA_TRIAL_KEY",
    "PREDICTIONS_KEY",
    "RACE_ROUND_KEY",
    "REPEAT_OF_KEY",
    "RUNG_KEY",
    "STATUSES",
    "STATUS_KEY",
    "TrialResult",
    "TrialStatus",
    "metric_columns",
]

"""The metric registry: every number a trial reports is declared here once.

A metric's entry says what it is (unit, default direction, how it reads on screen, whether a search may optimise
it). Config validation, the terminal table, ``best``, the report's axes, hover text and tables all read it, so
adding a metric is one ``register_metric`` call plus the code that measures it.

Pure: no torch, no ray (the report reads it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Unit = Literal["fraction", "count", "bytes", "seconds", "per_second", "ratio"]
Direction = Literal["max", "min"]

WORST_COST = 2.0**50
"""What an infeasible trial tells the sampler for a minimised metric (``worst``): no better than anything."""


@dataclass(frozen=True)
class Metric:
    """One measured quantity of a trial.

    Args:
        name: the key in trial results, the trials table's column, and ``objectives[].metric`` in a config.
        unit: what a value counts; it decides how the value is shown.
        direction: the better way (``max`` or ``min``): a config's objective defaults to it, ``best`` ranks by it.
        label: a short human name, used for axes and column headings.
        description: one line for the results reference page.
        objective: whether a search may optimise it (``objectives[].metric``).
        summary: shown in the terminal table (``peft-search show``) besides the search's objectives.
        log_scale: axes of it are drawn on a log scale (counts over orders of magnitude).
        interval: the metrics holding its confidence interval's low and high ends, if it has one.
    """

    name: str
    unit: Unit
    direction: Direction
    label: str
    description: str
    objective: bool = False
    summary: bool = False
    log_scale: bool = False
    interval: tuple[str, str] | None = None

    def format(self, value: float | int | None) -> str:
        """``0.9133``, ``1.2M``, ``812.4MiB``, ``31.2s``, ``98.1/s``; ``-`` for a missing value."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        value = float(value)
        if self.unit == "fraction":
            return f"{value:.4f}"
        if self.unit == "bytes":
            return _binary(value)
        if self.unit == "count":
            return _decimal(value)
        if self.unit == "seconds":
            return f"{value:.1f}s"
        if self.unit == "per_second":
            return f"{_decimal(value) if value >= 1000 else f'{value:.1f}'}/s"
        return f"{value:.4g}"

    @property
    def axis_title(self) -> str:
        """The label with its unit, for chart axes."""
        unit = {"bytes": "bytes", "seconds": "s", "per_second": "per s"}.get(self.unit)
        return f"{self.label} ({unit})" if unit else self.label

    @property
    def worst(self) -> float:
        """The value no feasible trial is worse than: what the sampler is told for a config that cannot run."""
        return 0.0 if self.direction == "max" else WORST_COST


def _binary(n: float) -> str:
    for suffix, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}B"


def _decimal(n: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


@dataclass(frozen=True)
class Objective:
    """A metric a search optimises, and which way."""

    metric: str
    mode: Direction

    @property
    def spec(self) -> Metric:
        return get_metric(self.metric)


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Declare a metric; declaring a name twice is an error."""
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is already registered")
    if not metric.name.isidentifier():
        raise ValueError(
            f"metric names are identifiers (a table column, a config value), not {metric.name!r}"
        )
    _REGISTRY[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests and plugins that register one for a while)."""
    _REGISTRY.pop(name, None)


def get_metric(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(_REGISTRY)}") from None


def metrics() -> Iterator[Metric]:
    """Every registered metric, in the order it was registered."""
    return iter(list(_REGISTRY.values()))


def objective_metrics() -> list[str]:
    """The names a config may use under ``objectives``."""
    return [m.name for m in _REGISTRY.values() if m.objective]


for _metric in (
    Metric(
        "accuracy",
        "fraction",
        "max",
        "held-out accuracy",
        "share of held-out rows classified (or answered) correctly",
        objective=True,
        summary=True,
        interval=("accuracy_ci_low", "accuracy_ci_high"),
    ),
    Metric(
        "accuracy_ci_low",
        "fraction",
        "max",
        "accuracy 95% CI low",
        "lower end of the 95 % Wilson score interval of the held-out accuracy (statsmodels proportion_confint)",
    ),
    Metric(
        "accuracy_ci_high",
        "fraction",
        "max",
        "accuracy 95% CI high",
        "upper end of the 95 % Wilson score interval of the held-out accuracy (statsmodels proportion_confint)",
    ),
    Metric(
        "eval_loss",
        "ratio",
        "min",
        "held-out loss",
        "mean cross-entropy on the held-out rows",
        objective=True,
    ),
    Metric(
        "trainable_params",
        "count",
        "min",
        "trainable parameters",
        "parameters the adapter trains (PEFT's own count)",
        objective=True,
        summary=True,
        log_scale=True,
    ),
    Metric(
        "total_params",
        "count",
        "min",
        "total parameters",
        "parameters of the adapted model, frozen ones included (PEFT's own count)",
        log_scale=True,
    ),
    Metric(
        "peak_memory_bytes",
        "bytes",
        "min",
        "peak memory",
        "peak training memory of the trial; its kind is in peak_memory_kind",
        objective=True,
        summary=True,
    ),
    Metric(
        "est_peak_memory_bytes",
        "bytes",
        "min",
        "estimated peak memory",
        "the peak memory `peft-search plan` estimated before training",
    ),
    Metric(
        "adapter_bytes",
        "bytes",
        "min",
        "adapter size",
        "size of adapter_model.safetensors, what ships",
        objective=True,
    ),
    Metric(
        "train_time_s",
        "seconds",
        "min",
        "training time",
        "seconds spent training (rung evaluations excluded)",
        objective=True,
        summary=True,
    ),
    Metric(
        "samples_per_s",
        "per_second",
        "max",
        "training samples/s",
        "training rows per second over all workers",
        objective=True,
    ),
    Metric(
        "tokens_per_s",
        "per_second",
        "max",
        "training tokens/s",
        "non-padding training tokens per second over all workers",
    ),
    Metric("eval_time_s", "seconds", "min", "evaluation time", "seconds of the final held-out evaluation"),
    Metric(
        "rung_eval_time_s",
        "seconds",
        "min",
        "rung evaluation time",
        "seconds of part-way evaluations for early stopping",
    ),
    Metric(
        "load_time_s", "seconds", "min", "load time", "seconds to load the base model and inject the adapter"
    ),
    Metric(
        "eval_rows", "count", "max", "held-out rows", "held-out rows the accuracy and loss were measured on"
    ),
    Metric("train_steps", "count", "min", "training steps", "optimizer steps trained"),
    Metric("world_size", "count", "min", "workers", "Ray Train workers the trial trained on"),
    Metric(
        "group_size",
        "count",
        "min",
        "group size",
        "the most trials its packed group trained at once while it was in it (search.packing)",
    ),
    Metric(
        "group_start_step",
        "count",
        "min",
        "group start step",
        "its packed group's step when it joined: 0 for the group's first members, more for a trial that took the "
        "slot of a member stopped or done (it trains its own steps from there)",
    ),
    Metric(
        "group_peak_memory_bytes",
        "bytes",
        "min",
        "group peak memory",
        "peak training memory of its whole packed group (peak_memory_bytes: the base model and an even share of "
        "the rest)",
    ),
    Metric(
        "packing_speedup",
        "ratio",
        "max",
        "packing speedup",
        "how many times as fast a training row trains packed as alone, as the search measured before its trials "
        "(search.packing: auto packs from 1.15)",
    ),
):
    register_metric(_metric)

DEFAULT_OBJECTIVES: tuple[Objective, ...] = (
    Objective("accuracy", "max"),
    Objective("trainable_params", "min"),
    Objective("peak_memory_bytes", "min"),
)
"""What a search optimises when its config names no objectives."""

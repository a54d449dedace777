"""The rule that picks one trial under limits: ``peft-search best`` and the report's budget picker share it.

The search's objectives rank the complete trials that meet every limit: the first objective decides, the others
break ties in order, then the earlier trial id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from reports.fronts import completed
from search.results.metrics import DEFAULT_OBJECTIVES, Metric, Objective, get_metric, metrics


@dataclass(frozen=True)
class Limit:
    """``metric <= value`` or ``metric >= value``, in the metric's own unit (bytes, not MiB)."""

    metric: str
    op: Literal["<=", ">="]
    value: float

    def holds(self, values: pd.Series) -> pd.Series:
        values = pd.to_numeric(values, errors="coerce").astype(float)
        return values <= self.value if self.op == "<=" else values >= self.value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:,.4g}"


_LIMIT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(\S.*?)\s*$")


def parse_limit(text: str, parse_bytes: Callable[[str], float] = float) -> Limit:
    """``peak_memory_bytes<=8GB`` or ``accuracy>=0.8``; ``parse_bytes`` reads values of byte metrics (sizes).

    Raises ``ValueError`` with a one-line message that says the fix.
    """
    match = _LIMIT.match(text)
    if not match:
        raise ValueError(f"{text!r} is not METRIC<=VALUE or METRIC>=VALUE (e.g. peak_memory_bytes<=8GB)")
    name, op, raw = match.groups()
    try:
        metric = get_metric(name)
    except KeyError:
        known = ", ".join(m.name for m in metrics())
        raise ValueError(f"unknown metric {name!r}; choose from {known}") from None
    try:
        value = parse_bytes(raw) if metric.unit == "bytes" else float(raw)
    except ValueError as err:
        raise ValueError(f"{name}: {raw!r} is not a number ({err})") from None
    return Limit(name, op, float(value))


def limits_json(limits: Iterable[Limit]) -> dict[str, dict[str, float]]:
    """``{"trainable_params": {"max": 1e6}, "accuracy": {"min": 0.8}}``; a repeated bound keeps the tighter."""
    out: dict[str, dict[str, float]] = {}
    for limit in limits:
        bound = "max" if limit.op == "<=" else "min"
        held = out.setdefault(limit.metric, {})
        tighter = min if bound == "max" else max
        held[bound] = tighter(held[bound], limit.value) if bound in held else limit.value
    return out


def rank(done: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Best first: by each objective in turn, then trial id."""
    keys = {
        f"_k{i}": done[o.metric].astype(float) * (-1.0 if o.mode == "max" else 1.0)
        for i, o in enumerate(objectives)
    }
    ranked = done.assign(**keys).sort_values([*keys, "trial_id"], kind="stable")
    return ranked.drop(columns=list(keys))


def _better(metric: Metric, mode: str, first: bool) -> str:
    if first:
        return ("highest " if mode == "max" else "lowest ") + metric.label
    if metric.unit == "count":
        return ("more " if mode == "max" else "fewer ") + metric.label
    return ("higher " if mode == "max" else "lower ") + metric.label


def rule_text(objectives: Sequence[Objective]) -> tuple[str, str]:
    """``("highest held-out accuracy", "; ties broken by fewer trainable parameters, then lower peak memory")``."""
    head = _better(objectives[0].spec, objectives[0].mode, first=True)
    ties = [_better(o.spec, o.mode, first=False) for o in objectives[1:]]
    return head, ("; ties broken by " + ", then ".join(ties) if ties else "")


@dataclass(frozen=True)
class Choice:
    trial: pd.Series | None
    reason: str


def choose_best(
    trials: pd.DataFrame,
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
    limits: Sequence[Limit] = (),
) -> Choice:
    """The best complete trial within the limits, ranked by the objectives (``rank``)."""
    done = completed(trials, objectives)
    n_done = len(done)
    for limit in limits:
        done = done[limit.holds(done[limit.metric])] if limit.metric in done else done.iloc[0:0]
    stated = ", ".join(map(str, limits)) or "no limits"
    if done.empty:
        return Choice(None, f"no complete trial meets {stated} ({n_done} complete trials in all)")
    head, ties = rule_text(objectives)
    best = rank(done, objectives).iloc[0]
    return Choice(best, f"{head} of {len(done)} complete trials meeting {stated} (of {n_done}){ties}")

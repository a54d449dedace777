"""The rule that picks one trial under limits: ``peft-search best`` and the report's budget picker share it.

The search's objectives rank the complete trials that meet every limit: the first objective decides, the others
break ties in order, then the earlier trial id.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from peft_search.reports.fronts import completed
from peft_search.search.numbers import parse_bytes as read_size
from peft_search.search.numbers import parse_count, parse_fraction
from peft_search.search.results.metrics import DEFAULT_OBJECTIVES, Metric, Objective, get_metric, metrics
from peft_search.search.results.noise import ALPHA, TEST, mcnemar_p


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


def parse_limit(text: str, parse_bytes: Callable[[str], float] = read_size) -> Limit:
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
    if metric.unit == "bytes":
        try:
            value = parse_bytes(raw)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    else:
        # Read as the command line reads its numbers (search.numbers): 100k parameters, 0.9 accuracy.
        read = {"fraction": parse_fraction, "count": parse_count}.get(metric.unit, _finite)
        try:
            value = read(raw)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return Limit(name, op, float(value))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def named_limits(
    max_params: float | None = None, max_memory: float | None = None, min_accuracy: float | None = None
) -> list[Limit]:
    """``best``'s named limits (``--max-params``, ``--max-memory`` in bytes, ``--min-accuracy``), those given."""
    given = (
        ("trainable_params", "<=", max_params),
        ("peak_memory_bytes", "<=", max_memory),
        ("accuracy", ">=", min_accuracy),
    )
    return [Limit(metric, op, float(value)) for metric, op, value in given if value is not None]


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
    if done.empty:
        return done
    keys = {
        f"_k{i}": done[o.metric].astype(float) * (-1.0 if o.mode == "max" else 1.0)
        for i, o in enumerate(objectives)
    }
    ranked = done.assign(**keys).sort_values([*keys, "trial_id"], kind="stable")
    return ranked.drop(columns=list(keys))


def better(metric: Metric, mode: str, first: bool) -> str:
    if first:
        return ("highest " if mode == "max" else "lowest ") + metric.label
    if metric.unit == "count":
        return ("more " if mode == "max" else "fewer ") + metric.label
    return ("higher " if mode == "max" else "lower ") + metric.label


def cheapest(metric: Metric) -> str:
    """``fewest trainable parameters``, ``lowest peak memory``, ``highest training samples/s``."""
    if metric.direction == "max":
        return f"highest {metric.label}"
    return ("fewest " if metric.unit == "count" else "lowest ") + metric.label


def auto_rule(cost: Metric, alpha: float = ALPHA, n_rows: int | None = None) -> str:
    """``best``'s and the picker's words for ``--tolerance auto``."""
    rows = f"the {n_rows} paired held-out rows" if n_rows else "the paired held-out rows"
    return (
        f"tolerance auto: of the trials within the limits, those the {TEST} on {rows} cannot tell from the most "
        f"accurate (p >= {alpha:g}), the one with the {cheapest(cost)}"
    )


def rule_text(objectives: Sequence[Objective]) -> tuple[str, str]:
    """``("highest held-out accuracy", "; ties broken by fewer trainable parameters, then lower peak memory")``."""
    head = better(objectives[0].spec, objectives[0].mode, first=True)
    ties = [better(o.spec, o.mode, first=False) for o in objectives[1:]]
    return head, ("; ties broken by " + ", then ".join(ties) if ties else "")


Tolerance = Literal["auto"] | float
PREFER_ALIASES = {"params": "trainable_params", "memory": "peak_memory_bytes", "size": "adapter_bytes"}


@dataclass(frozen=True)
class Choice:
    """The pick, the trial best on the objectives alone, and how sure the difference between them is."""

    trial: pd.Series | None
    """The pick (None when no complete trial meets the limits)."""
    reason: str
    most_accurate: pd.Series | None = None
    """The best complete trial within the limits by the objectives alone (what ``--tolerance 0`` picks)."""
    p_value: float | None = None
    """The paired test's p-value between the pick and ``most_accurate`` (None when they are the same trial)."""
    indistinguishable: tuple[str, ...] = ()
    """The trials that tie with ``most_accurate`` under the rule (itself included), best first."""
    rule: str = ""
    race: dict | None = None
    """The search's race of tied configs over new seeds (``search.race``), as ``RaceState.to_json`` gives it."""


def parse_tolerance(text: str) -> Tolerance:
    """``auto``, ``0`` or an accuracy margin such as ``0.01``; ``ValueError`` otherwise."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not auto, 0 or a margin such as 0.01") from None
    if not 0 <= value < 1:
        raise ValueError(f"{text!r}: a margin is at least 0 and below 1 (a share of the held-out rows)")
    return value


def prefer_metric(prefer: str | None, objectives: Sequence[Objective]) -> str:
    """What "cheapest" means among tied trials: ``--prefer`` (an alias or a metric), else the second objective,
    else trainable parameters."""
    if prefer:
        name = PREFER_ALIASES.get(prefer, prefer)
        get_metric(name)  # KeyError names the known ones
        return name
    return objectives[1].metric if len(objectives) > 1 else "trainable_params"


def choose_best(
    trials: pd.DataFrame,
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
    limits: Sequence[Limit] = (),
    *,
    tolerance: Tolerance = 0,
    prefer: str | None = None,
    correct: Mapping[str, Sequence[bool]] | None = None,
    alpha: float = ALPHA,
) -> Choice:
    """The trial to ship within the limits.

    ``tolerance 0``: the best by the objectives (``rank``). A margin ``X``: of the trials whose first objective is
    within ``X`` of the best one's, the cheapest by ``prefer``. ``auto``: of the trials the paired test cannot tell
    from the best one at ``alpha`` (per-row correctness in ``correct``; the first objective is accuracy), the
    cheapest by ``prefer``. ``auto`` without per-row predictions ranks as ``0`` and says so.
    """
    done = completed(trials, objectives)
    n_done = len(done)
    for limit in limits:
        done = done[limit.holds(done[limit.metric])] if limit.metric in done else done.iloc[0:0]
    stated = ", ".join(map(str, limits)) or "no limits"
    if done.empty:
        return Choice(None, f"no complete trial meets {stated} ({n_done} complete trials in all)")
    head, ties = rule_text(objectives)
    ranked = rank(done, objectives)
    top = ranked.iloc[0]
    first = objectives[0]
    cost = prefer_metric(prefer, objectives)
    pool = f"{len(done)} complete trials meeting {stated}, of {n_done}"
    correct = correct or {}
    paired = first.metric == "accuracy" and str(top["trial_id"]) in correct
    if tolerance == "auto" and not paired:
        why = (
            "no per-row held-out predictions"
            if first.metric == "accuracy"
            else f"the first objective is {first.metric}"
        )
        rule = f"tolerance auto fell back to 0 ({why}): the {head}{ties}, then the earlier trial id"
        return Choice(top, f"{rule} ({pool})", top, None, (str(top["trial_id"]),), rule)
    if tolerance == 0:
        rule = f"tolerance 0: the {head}{ties}, then the earlier trial id"
        return Choice(top, f"{rule} ({pool})", top, None, (str(top["trial_id"]),), rule)
    if tolerance == "auto":
        a = correct[str(top["trial_id"])]
        tests = {t: mcnemar_p(a, correct[t]) for t in map(str, ranked["trial_id"]) if t in correct}
        tied = ranked[[tests.get(str(t), 0.0) >= alpha for t in ranked["trial_id"]]]
        rule = auto_rule(get_metric(cost), alpha, len(a))
    else:
        sign = -1.0 if first.mode == "max" else 1.0
        gap = (ranked[first.metric].astype(float) - float(top[first.metric])) * sign
        tied = ranked[gap <= float(tolerance) + 1e-12]
        tests = {}
        rule = (
            f"tolerance {float(tolerance):g}: of the trials within the limits whose {first.spec.label} is within "
            f"{float(tolerance):g} of the best, the one with the {cheapest(get_metric(cost))}"
        )
    order = [Objective(cost, get_metric(cost).direction), *objectives]
    pick = rank(tied, order).iloc[0]
    same = pick["trial_id"] == top["trial_id"]
    p = None if same else (tests.get(str(pick["trial_id"])) if tests else _p_or_none(correct, top, pick))
    ids = tuple(str(t) for t in tied["trial_id"])
    return Choice(pick, f"{rule} ({pool})", top, p, ids, rule)


def _p_or_none(correct: Mapping[str, Sequence[bool]], a: pd.Series, b: pd.Series) -> float | None:
    x, y = correct.get(str(a["trial_id"])), correct.get(str(b["trial_id"]))
    return None if x is None or y is None else mcnemar_p(x, y)

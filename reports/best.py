"""``peft-search best``: the trial to ship under limits (``search.shipping.export`` writes it out)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft_search.reports.choice import (
    Choice,
    Limit,
    Tolerance,
    cheapest,
    choose_best,
    limits_json,
    prefer_metric,
)
from peft_search.reports.race import read_race
from peft_search.reports.table import load_trials, record_json
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import Objective, get_metric, metrics
from peft_search.search.results.noise import TEST


def _metric_line(trial: Any, names: Sequence[str]) -> str:
    parts = []
    for name in names:
        text = get_metric(name).format(trial.get(name))
        if name == "peak_memory_bytes" and isinstance(trial.get("peak_memory_kind"), str):
            text += f" ({trial['peak_memory_kind']})"
        parts.append(f"{get_metric(name).label} {text}")
    return "   ".join(parts)


def _who(t: Any, objectives: Sequence[Objective]) -> str:
    return f"trial {t['trial_id']} ({t['method']}, {t['quantization']}): {_metric_line(t, [o.metric for o in objectives])}"


def describe(choice: Choice, objectives: Sequence[Objective]) -> str:
    """The pick for a terminal: the trial, the most accurate one and how sure their difference is, the rule."""
    if choice.trial is None:
        return f"No trial chosen: {choice.reason}."
    t = choice.trial
    names = [o.metric for o in objectives]
    others = [m.name for m in metrics() if m.summary and m.name not in names and m.name in t.index]
    lr = t.get("learning_rate")
    lines = [
        f"Best trial: {t['trial_id']} ({t['method']}, quantization {t['quantization']})",
        f"  {_metric_line(t, names)}",
        *([f"  {_metric_line(t, others)}"] if others else []),
        f"  learning rate {lr:.3g}" if isinstance(lr, float) and lr == lr else "  learning rate -",
        f"  PEFT config: {t['peft_config']}",
    ]
    top = choice.most_accurate
    if top is not None and top["trial_id"] != t["trial_id"]:
        sure = (
            f"p = {choice.p_value:.3g} ({TEST} on the paired held-out rows): not significantly better"
            if choice.p_value is not None
            else "no paired test (no per-row predictions)"
        )
        lines.append(f"  best on the objectives alone: {_who(top, objectives)}; {sure}")
        tied = [i for i in choice.indistinguishable if i not in (str(t["trial_id"]), str(top["trial_id"]))]
        if tied:
            lines.append(f"  also tied with it: {', '.join(tied)}")
    elif len(choice.indistinguishable) > 1:
        lines.append(f"  tied with it under the rule: {', '.join(choice.indistinguishable[1:])}")
    lines.append(f"  why: {choice.reason}")
    runs = t.get("runs")
    if (
        choice.race is None
        and len(choice.indistinguishable) > 1
        and not (isinstance(runs, float) and runs > 1)
    ):
        lines.append(
            "  note: this rests on one training run per config, whose seed alone can move accuracy by points; "
            "search.race races the tied configs over new seeds"
        )
    return "\n".join(lines)


def choice_json(choice: Choice, objectives: Sequence[Objective], limits: Sequence[Limit]) -> dict[str, Any]:
    """``best --format json``: the pick and the most accurate trial (typed records, or null), the p-value between
    them, the trials that tie with the most accurate, the rule, and what it was chosen by."""
    as_record = lambda t: None if t is None else record_json(t.to_dict())  # noqa: E731
    return {
        "pick": as_record(choice.trial),
        "most_accurate": as_record(choice.most_accurate),
        "p_value": choice.p_value,
        "indistinguishable": list(choice.indistinguishable),
        "rule": choice.rule,
        "reason": choice.reason,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in objectives],
        "limits": limits_json(limits),
        "race": choice.race,
    }


def best_command(
    search_dir: str | Path,
    *,
    limits: Sequence[Limit] = (),
    tolerance: Tolerance = "auto",
    prefer: str | None = None,
) -> tuple[Choice, tuple[Objective, ...]]:
    """Choose by the search's own objectives: the choice, and the objectives it was ranked by. A search that raced
    its tied configs (``search.race``) picks the cheapest config the race left (of those within its margin of the
    leader's mean, where it stopped undecided), within the limits."""
    trials = load_trials(search_dir)
    objectives = trials.attrs["objectives"]
    correct = ResultsDir(search_dir).correct_by_trial()
    choice = choose_best(trials, objectives, limits, tolerance=tolerance, prefer=prefer, correct=correct)
    race = read_race(search_dir)
    if race is None or len(race.entrants) < 2 or tolerance != "auto":
        return choice, objectives
    left = trials[trials["trial_id"].astype(str).isin(race.close)]
    # Every config left counts as tied: a margin of 1 (all of accuracy) leaves only --prefer to choose by.
    raced = choose_best(left, objectives, limits, tolerance=1.0, prefer=prefer)
    if raced.trial is None:
        note = (
            f"race: {race.detail}; none of the configs it leaves to pick from meets the limits, so the pick is "
            "by the rule"
        )
        return dataclasses.replace(choice, reason=f"{choice.reason}; {note}", race=race.to_json()), objectives
    cost = get_metric(prefer_metric(prefer, objectives))
    pool = (
        f"the race left ({len(race.left)})"
        if race.close == race.left
        else f"the race left within its margin of the leader's mean ({len(race.close)} of {len(race.left)})"
    )
    rule = f"search.race: of the configs {pool}, the one with the {cheapest(cost)}"
    return dataclasses.replace(
        raced,
        reason=f"race: {race.detail}; {rule}",
        most_accurate=choice.most_accurate,
        p_value=None,
        indistinguishable=tuple(race.close),
        rule=rule,
        race=race.to_json(),
    ), objectives

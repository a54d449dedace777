"""The race of tied configs (``search.race``) as the driver, ``best`` and the report see it: its entrants (the
configs ``best --tolerance auto`` cannot tell from the most accurate one), and its state replayed from the results
directory by ``search.results.race``, so every reader, and a resumed driver, sees the same race."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import yaml

from peft_search.reports.choice import choose_best, prefer_metric, rank
from peft_search.reports.fronts import completed
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import Objective, get_metric
from peft_search.search.results.race import RaceState, race_state
from peft_search.search.results.records import REPEAT_OF_KEY


def originals(trials: pd.DataFrame) -> pd.DataFrame:
    """The search's own trials: neither seed repeats nor race runs."""
    return trials[trials[REPEAT_OF_KEY].isna()] if REPEAT_OF_KEY in trials else trials


def entrants(
    trials: pd.DataFrame, objectives: Sequence[Objective], correct: Mapping[str, Sequence[bool]]
) -> list[str]:
    """The original trials the paired test on the held-out rows cannot tell from the most accurate one (itself
    first): what ``best --tolerance auto`` ties, judged on one run each."""
    own = originals(trials)
    choice = choose_best(own, objectives, tolerance="auto", correct=correct)
    return list(choice.indistinguishable) if choice.trial is not None else []


def cheapest_first(
    trials: pd.DataFrame, ids: Sequence[str], objectives: Sequence[Objective], prefer: str | None = None
) -> list[str]:
    """``ids`` cheapest first by ``prefer`` (default: the second objective), then by the objectives."""
    cost = prefer_metric(prefer, objectives)
    pool = completed(originals(trials), objectives)
    pool = pool[pool["trial_id"].astype(str).isin(ids)]
    ranked = rank(pool, [Objective(cost, get_metric(cost).direction), *objectives])
    return [str(t) for t in ranked["trial_id"]]


def read_race(search_dir: str | Path) -> RaceState | None:
    """The search's race replayed from its directory (cheapest by the search's second objective, as it ran); None
    when the search runs no race (``search.race`` unset)."""
    results = ResultsDir(search_dir)
    try:
        config = results.read_config()
    except (OSError, yaml.YAMLError):  # no config.yaml (a table alone, a damaged copy): no race to replay
        return None
    search = (config.get("search") or {}) if isinstance(config, dict) else {}
    settings = search.get("race")
    if settings is None:
        return None
    trials, objectives = results.read_trials(), results.objectives()
    ids = entrants(trials, objectives, results.correct_by_trial())
    return race_state(
        trials,
        ids,
        base_seed=int(search.get("seed") or 0),
        alpha=float(settings["alpha"]),
        margin=float(settings["margin"]),
        max_rounds=int(settings["max_rounds"]),
        budget=float(settings["budget"]),
        cheapest_first=cheapest_first(trials, ids, objectives),
        labels={i: label(trials, i) for i in ids},
    )


def label(trials: pd.DataFrame, trial_id: str) -> str:
    """``lora nf4 (a1b2c3d4)``: a config as the race's lines name it."""
    row = trials[trials["trial_id"].astype(str) == trial_id]
    if row.empty:
        return trial_id
    t = row.iloc[0]
    quant = "" if t.get("quantization") in (None, "none") else f" {t['quantization']}"
    return f"{t.get('candidate') if t.get('candidate') not in (None, 'sampled') else t.get('method')}{quant} ({trial_id})"

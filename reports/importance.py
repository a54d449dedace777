"""Parameter importance per objective, from the search's Optuna study, over its complete sampled trials.

Which Optuna trials count is read from the trials table (its ``optuna_trial`` column and explicit status), never
guessed from objective values: an infeasible config completes in Optuna with the worst values, for the sampler's
sake, and says nothing about what drives a trained adapter's metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import Objective

MIN_TRIALS = 3
PARAMS = ["method", "learning_rate"]


@dataclass(frozen=True)
class Importances:
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    """Objective metric -> parameter -> importance; empty when not available."""
    note: str = ""
    """Why there are none."""
    n_trials: int = 0


def complete_optuna_numbers(trials: pd.DataFrame) -> set[int] | None:
    """The Optuna trial numbers of the table's complete trials; None when the table never recorded them."""
    if "optuna_trial" not in trials or trials["optuna_trial"].isna().all():
        return None
    done = trials[(trials["status"] == "complete") & trials["optuna_trial"].notna()]
    return {int(n) for n in done["optuna_trial"]}


def importances(results: ResultsDir, trials: pd.DataFrame, objectives: Sequence[Objective]) -> Importances:
    """Optuna's default evaluator, per objective, over the complete trials TPE sampled (explicit candidates have
    no sampled parameters). A nicety: any failure becomes a note and the report renders without it."""
    numbers = complete_optuna_numbers(trials)
    if numbers is None:
        return Importances(
            note="Parameter importance is not available for this table: it records no Optuna trial numbers."
        )
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        name = results.read_facts().get("name", results.name)
        study = optuna.load_study(study_name=name, storage=results.optuna_url)
        sampled = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number in numbers and t.state.name == "COMPLETE" and all(p in t.params for p in PARAMS)
        ]
        if len(sampled) < MIN_TRIALS:
            note = f"Parameter importance needs at least {MIN_TRIALS} complete sampled trials (has {len(sampled)})."
            return Importances(note=note)
        # Evaluate on these trials only: a study holding just them (the evaluator reads every complete trial).
        view = optuna.create_study(directions=study.directions)
        view.add_trials(sampled)
        out = {}
        with warnings.catch_warnings():
            # Optuna's default evaluator rates what drives the target low, and warns so: maximised ones are negated.
            warnings.filterwarnings("ignore", message=".*importances of params to achieve low")
            for i, o in enumerate(objectives):
                sign = -1.0 if o.mode == "max" else 1.0
                out[o.metric] = optuna.importance.get_param_importances(
                    view, params=PARAMS, target=lambda t, i=i, s=sign: s * t.values[i]
                )
        return Importances(out, "", len(sampled))
    except Exception as err:  # importance is a nicety: a report must render without it
        return Importances(note=f"Parameter importance not available ({type(err).__name__}: {err}).")

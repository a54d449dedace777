"""Warm start (``search.warm_start``): a previous search's finished trials go into the new study before it samples,
so a second search of the same model starts where the first ended.

The previous search must have trained the same model on the same data over the same space with the same training
settings (its trials' values mean the same thing and their parameters have the same distributions); the sampler,
its seed, the number of trials, early stopping and resources are free to change. Its COMPLETE trials (infeasible
ones included: they complete with the worst values) and PRUNED trials (stopped early) are added with their
parameters (less the ``candidate`` choice, whose choices are each search's own), values and user attributes, plus ``attributes.WARM_START`` naming where they came from. They are the
sampler's evidence only: the new search's table, report and ``best`` hold its own trials. The explicit candidates
may differ: one the previous search ran is not run again, a new one runs first as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.loop.recovery import attributes
from peft_search.search.loop.recovery.resume import differences, with_defaults
from peft_search.search.redact import redact
from peft_search.search.results.layout import CONFIG_FILE, OPTUNA_FILE, ResultsDir

if TYPE_CHECKING:
    import optuna

    from peft_search.search.settings.schema import SearchConfig

SAME_SECTIONS = ("model", "dataset", "space", "training")


def check_warm_start(cfg: SearchConfig) -> Path | None:
    """The previous search's directory, checked against this config; ``ConfigError`` naming the field otherwise."""
    given = cfg.search.warm_start
    if given is None:
        return None
    if "://" in given:
        raise ConfigError(
            f"search.warm_start: {given} is not a local directory; copy the previous search's directory down "
            "and give its path"
        )
    path = Path(given).expanduser().resolve()
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(
            f"search.warm_start: {path} holds no peft-search search ({CONFIG_FILE} missing); give the directory "
            "of a previous search (RESULTS_DIR/NAME)"
        )
    if path == cfg.search_dir():
        raise ConfigError(
            "search.warm_start: that is this search's own directory; give a previous search's directory, or "
            "resume this one with `peft-search resume`"
        )
    saved = with_defaults(yaml.safe_load((path / CONFIG_FILE).read_text()))
    mine = redact(cfg.model_dump(mode="json"))
    for section in SAME_SECTIONS:
        # Explicit candidates may change: new ones run first, those the previous search ran are not run again.
        changed = [
            f
            for f in differences(saved.get(section), mine.get(section), section)
            if not f.startswith("space.candidates")
        ]
        if changed:
            raise ConfigError(
                f"search.warm_start: {changed[0]} differs from the previous search in {path}; warm-start only "
                f"from a search of the same {', '.join(SAME_SECTIONS)} (or drop search.warm_start)"
            )
    before = [o["metric"] for o in saved.get("objectives", [])]
    missing = [o.metric for o in cfg.objectives if o.metric not in before]
    if missing:
        raise ConfigError(
            f"search.warm_start: objective {missing[0]} was not an objective of the previous search in {path} "
            f"({', '.join(before)}); use those objectives or drop search.warm_start"
        )
    if not (path / OPTUNA_FILE).is_file():
        raise ConfigError(f"search.warm_start: {path} has no Optuna study yet; let that search run first")
    return path


def add_previous_trials(study: optuna.Study, cfg: SearchConfig, path: Path) -> int:
    """Add the finished trials of the previous search at ``path`` (``check_warm_start``'s answer) to ``study`` (a
    new one); returns how many were added."""
    import optuna

    results = ResultsDir(path)
    previous = optuna.load_study(study_name=results.read_config()["name"], storage=results.optuna_url)
    names = previous.metric_names or [o["metric"] for o in results.read_config()["objectives"]]
    order = [names.index(o.metric) for o in cfg.objectives]
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    added = []
    for t in previous.get_trials(deepcopy=False, states=done):
        complete = t.state == optuna.trial.TrialState.COMPLETE
        added.append(
            optuna.trial.create_trial(
                state=t.state,
                values=[t.values[i] for i in order] if complete else None,
                # Not the `candidate` choice: its choices are each search's own candidate names (the user
                # attributes still say which candidate it was); the space's parameters stay.
                params={k: v for k, v in t.params.items() if k != "candidate"},
                distributions={k: v for k, v in t.distributions.items() if k != "candidate"},
                user_attrs={**t.user_attrs, attributes.WARM_START: f"{path}#{t.number}"},
                intermediate_values=t.intermediate_values,
            )
        )
    study.add_trials(added)
    return len(added)

"""A damaged Optuna study, rebuilt by a resume from the search's other records.

The study holds what the sampler learns from: each finished trial's parameters (in their distributions), values
and state. The trials table has the values and states; each trial's own config under ``tune/trial-ID/`` has the
parameters Optuna suggested. The distributions come from the space itself: each trial's parameters are replayed
through the search's define-by-run function in a scratch study (enqueued, so every suggestion returns the recorded
value and records its distribution), then added to a new study as a finished trial. The damaged file is kept
beside it (``optuna.db.damaged``).

Tune's saved searcher points at the old study's trials, so the resume then runs on with a new Tuner (``reconcile``
with ``trust_tune=False``): finished trials are kept, cut-off ones asked for again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from typing import Any

import optuna

from peft_search.search.loop.recovery import attributes, status
from peft_search.search.results.layout import OPTUNA_FILE, ResultsDir
from peft_search.search.results.metrics import get_metric
from peft_search.search.results.records import TrialResult
from peft_search.search.settings.schema import SearchConfig
from peft_search.spaces.sampling import TRAINING_PREFIX, DefineByRun


def study_is_damaged(results: ResultsDir) -> str | None:
    """SQLite's verdict on the study file when it is damaged, else None.

    Opened for writing (the resume asking holds the search's lock): a driver killed in the middle of a write leaves
    a hot journal beside the file, which SQLite rolls back on this first read, as it would for Optuna. A read-only
    connection cannot, and fails with "attempt to write a readonly database" on a study that is whole."""
    path = results.path / OPTUNA_FILE
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as err:
        verdict = str(err)
    return None if verdict == "ok" else verdict


def rebuild_study(cfg: SearchConfig, space: DefineByRun, results: ResultsDir) -> str:
    """Set the damaged study aside, add every finished trial of the table to a new one, renumber the table's
    ``optuna_trial`` to match; what was done, in words."""
    path = results.path / OPTUNA_FILE
    for leftover in sorted(results.path.glob(f"{OPTUNA_FILE}*")):  # the database and any journal beside it
        if not leftover.name.endswith(".damaged"):
            leftover.rename(leftover.with_name(leftover.name + ".damaged"))
    directions = ["maximize" if o.mode == "max" else "minimize" for o in cfg.objectives]
    study = optuna.create_study(storage=results.optuna_url, study_name=cfg.name, directions=directions)
    with contextlib.suppress(Exception):  # experimental in Optuna; the names are a convenience
        study.set_metric_names([o.metric for o in cfg.objectives])
    configs = _tune_configs(results)
    records = results.read_records()
    renumbered: dict[str, int] = {}
    skipped = 0
    for record in sorted(records, key=lambda r: (r.optuna_trial is None, r.optuna_trial or 0, r.trial_id)):
        if record.repeat_of is not None or record.status == "running":
            continue  # repeats have no Optuna trial; a cut-off trial is asked for again
        config = configs.get(record.trial_id)
        if config is None:
            skipped += 1
            continue
        scratch = optuna.create_study(directions=directions)
        user_attrs = {} if record.candidate in (None, "sampled") else {attributes.CANDIDATE: record.candidate}
        scratch.enqueue_trial(_optuna_params(config), user_attrs=user_attrs)
        trial = scratch.ask()
        space(trial)
        attrs = {**user_attrs, attributes.CONFIG: attributes.config_attr(config)}
        state, values = _outcome(record, cfg)
        if record.status in ("stopped_early", "infeasible"):
            attrs[attributes.STATUS] = record.status
        study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                values=values,
                state=state,
                user_attrs=attrs,
            )
        )
        renumbered[record.trial_id] = len(study.trials) - 1
    results.write_trials(
        dataclasses.replace(r, optuna_trial=renumbered.get(r.trial_id, r.optuna_trial)) for r in records
    )
    said = f"rebuilt the damaged Optuna study from the trials table and the trials' configs: {len(renumbered)} trials"
    if skipped:
        said += f" ({skipped} finished trial(s) without a config of their own left out)"
    return said + f"; the damaged file is kept as {path.name}.damaged"


def _tune_configs(results: ResultsDir) -> dict[str, dict[str, Any]]:
    configs = {}
    for trial_dir in results.tune_path.glob("trial-*"):
        with contextlib.suppress(OSError, ValueError):
            configs[trial_dir.name.removeprefix("trial-")] = json.loads(
                (trial_dir / "params.json").read_text()
            )
    return configs


def _optuna_params(config: dict[str, Any]) -> dict[str, Any]:
    """The values Optuna suggested for a trial, by their Optuna names: the config's flat scalar entries (``method``,
    ``lora.r``, ``learning_rate``, ...) and each searched ``TrainingArguments`` field as ``training.NAME``."""
    params = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    params.update({TRAINING_PREFIX + k: v for k, v in (config.get("training") or {}).items()})
    return params


def _outcome(record: TrialResult, cfg: SearchConfig) -> tuple[optuna.trial.TrialState, list[float] | None]:
    """The state and values the searcher told the study for a trial that ended so (``PeftOptunaSearch``)."""
    values = [record.metrics.get(o.metric) for o in cfg.objectives]
    return status.to_study(record.status, values, [get_metric(o.metric).worst for o in cfg.objectives])

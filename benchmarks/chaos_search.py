"""The search ``benchmarks.chaos`` tortures, and what it checks once the search is resumed to its end: the trials
table, the Optuna study and the adapters hold exactly its trials, each once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.tiny import tiny_bert, topics_csv

ENDED = ("complete", "failed", "infeasible", "stopped_early")
"""The statuses a trial of a finished search may have (never ``running``)."""


def make_search(
    root: Path,
    num_trials: int = 6,
    *,
    name: str = "chaos",
    eval_size: int = 12,
    model: str | Path | None = None,
    data: str | Path | None = None,
    max_concurrent: int = 2,
) -> Path:
    """A tiny search's YAML config; its results go to ``root/results/NAME``. Returns the config's path. The model
    and data are built once under ``root``, unless given (a test's session-wide tiny BERT and topics: the memory
    measurements cached for them serve this search too)."""
    root.mkdir(parents=True, exist_ok=True)
    model = Path(model) if model is not None else root / "tiny-bert"
    data = Path(data) if data is not None else root / "topics.csv"
    if not (model / "config.json").exists():
        tiny_bert(model)
    if not data.exists():
        topics_csv(data)
    raw = {
        "name": name,
        "model": {"name_or_path": str(model)},
        "dataset": {"source": str(data), "train_per_class": 8, "eval_size": eval_size},
        "space": {"methods": ["lora", "ia3"], "ranks": [2, 4]},
        "search": {
            "num_trials": num_trials,
            "seed": 0,
            "max_concurrent": max_concurrent,
            "early_stopping": {"rule": "none"},
        },
        "training": {"max_steps": 1, "batch_size": 4, "max_seq_length": 24, "eval_batch_size": 8},
        "resources": {"cpus_per_worker": 1},
        "results_dir": str(root / "results"),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def read_table(search_dir: Path):
    """The trials table, or None while it is missing or does not read."""
    import pandas as pd

    try:
        return pd.read_parquet(search_dir / "trials.parquet")
    except Exception:  # missing or damaged: the checks say which
        return None


def complete_trials(search_dir: Path) -> dict[str, tuple[str, str]]:
    """Trial id -> (training time, adapter path) of the trials the table shows complete: a trial trained again
    has another training time."""
    trials = read_table(search_dir)
    if trials is None:
        return {}
    done = trials[trials["status"] == "complete"]
    return {str(r.trial_id): (repr(r.train_time_s), str(r.adapter_path)) for r in done.itertuples()}


def tally(search_dir: Path) -> dict[str, Any]:
    """Rows, duplicates and statuses of the trials table (None when it does not read)."""
    trials = read_table(search_dir)
    if trials is None:
        return {"rows": None, "duplicate_ids": 0, "duplicate_optuna": 0, "statuses": {}}
    numbers = trials["optuna_trial"].dropna()
    return {
        "rows": len(trials),
        "duplicate_ids": int(trials["trial_id"].duplicated().sum()),
        "duplicate_optuna": int(numbers.duplicated().sum()),
        "statuses": trials["status"].value_counts().to_dict(),
    }


def check(search_dir: Path, num_trials: int) -> list[str]:
    """What is wrong with a finished search of ``num_trials`` trials (empty: nothing): its trials table, its Optuna
    study and its adapters must all hold exactly the trials it ran, each once."""
    import optuna

    from peft_search.search.loop.recovery.attributes import STALE as STALE_ATTR

    problems = []
    trials = read_table(search_dir)
    if trials is None:
        problems.append("trials.parquet: missing or unreadable")
        complete_ids, numbers = set(), set()
    else:
        t = tally(search_dir)
        if t["rows"] != num_trials:
            problems.append(f"trials.parquet: {t['rows']} rows, expected {num_trials}")
        odd = {s: n for s, n in t["statuses"].items() if s not in ENDED}
        if odd:
            problems.append(f"trials.parquet: rows with a status a finished search cannot have: {odd}")
        failed = trials[trials["status"] != "complete"]
        if len(failed):
            said = "; ".join(f"{r.trial_id} {r.status}: {str(r.error)[:160]}" for r in failed.itertuples())
            problems.append(f"trials.parquet: {len(failed)} trial(s) not complete ({said})")
        for column, key in (("trial_id", "duplicate_ids"), ("optuna_trial", "duplicate_optuna")):
            if t[key]:
                twice = trials[column][trials[column].duplicated(keep=False)].dropna().tolist()
                problems.append(f"trials.parquet: duplicate {column} {sorted(set(twice))}")
        done = trials[trials["status"] == "complete"]
        complete_ids = {str(i) for i in done["trial_id"]}
        numbers = {int(n) for n in trials["optuna_trial"].dropna()}
        for r in done.itertuples():
            if not (isinstance(r.adapter_path, str) and (search_dir / r.adapter_path).exists()):
                problems.append(f"trial {r.trial_id}: its adapter_path {r.adapter_path!r} does not exist")
    try:
        if not (search_dir / "optuna.db").is_file():  # loading would create it
            raise FileNotFoundError("no optuna.db")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=search_dir.name, storage=f"sqlite:///{search_dir / 'optuna.db'}")
        by_state: dict[str, list] = {}
        for s in study.get_trials(deepcopy=False):
            by_state.setdefault(s.state.name, []).append(s)
        complete = {s.number for s in by_state.get("COMPLETE", [])}
        if len(complete) != num_trials:
            problems.append(f"optuna.db: {len(complete)} COMPLETE trials, expected {num_trials}")
        if by_state.get("RUNNING"):
            problems.append(f"optuna.db: RUNNING trials {[s.number for s in by_state['RUNNING']]}")
        unexplained = [s.number for s in by_state.get("FAIL", []) if STALE_ATTR not in s.user_attrs]
        if unexplained:
            problems.append(f"optuna.db: FAIL trials without {STALE_ATTR}: {unexplained}")
        if trials is not None and numbers != complete:
            problems.append(
                f"the table's optuna_trial numbers {sorted(numbers)} != the study's COMPLETE {sorted(complete)}"
            )
    except Exception as err:
        problems.append(
            f"optuna.db: cannot load the study ({type(err).__name__}: {str(err).strip().splitlines()[0][:160]})"
        )
    adapters = {p.name for p in (search_dir / "train").glob("train-*")}
    expected = {f"train-{i}" for i in complete_ids}
    if adapters - expected:
        problems.append(f"train/: adapters of no complete trial: {sorted(adapters - expected)}")
    if expected - adapters:
        problems.append(f"train/: complete trials without an adapter: {sorted(expected - adapters)}")
    return problems


def trial_times(search_dir: Path) -> list[tuple[float, float]]:
    """(start, own seconds) of each trial, from the last line of Tune's per-trial result.json."""
    times = []
    for path in (search_dir / "tune").glob("trial-*/result.json"):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if lines:
            last = json.loads(lines[-1])
            if "trial_started_at" in last:
                times.append((last["trial_started_at"], last["trial_total_s"]))
    return sorted(times)

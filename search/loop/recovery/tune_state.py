"""Ray Tune's saved experiment state, as a resume reads and mends it.

Tune has no public API to read or amend what it saved (its trial list, the search generator's counter, the
concurrency limiter's live trials), so this module is the one place that knows those files' format; each field it
reads or writes is reached by one small function, and ``check`` (run by
``tests/search/loop/recovery/test_tune_state.py`` against a real Tuner) names the field a Ray release changed.

The files (the newest of each kind wins, as ``Tuner.restore`` picks them; a file set aside gets a suffix):

- ``experiment_state-*.json``: ``trial_data``, a list of ``[trial JSON, run metadata JSON]``; the trial's
  ``trial_id``, ``status`` and ``config``, the metadata's ``last_result``;
- ``search_gen_state-*.json`` (a pickle): the search generator's ``total_samples``, ``counter`` and ``finished``, and
  each searcher wrapper's state under ``name:...`` (the ``ConcurrencyLimiter``'s ``live_trials`` and
  ``num_unfinished_live_trials``);
- ``searcher-state-*.pkl``: the searcher's own state (read whole only: that it reads);
- ``tuner.pkl``: the Tuner itself, which ``Tuner.restore`` reads first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPERIMENT_STATE = "experiment_state-*.json"
SEARCH_GEN_STATE = "search_gen_state-*.json"
SEARCHER_STATE = "searcher-state-*.pkl"
TUNER_FILE = "tuner.pkl"
KINDS = (EXPERIMENT_STATE, SEARCH_GEN_STATE, SEARCHER_STATE)


class TuneStateChanged(RuntimeError):
    """Tune's saved state lacks a field the resume reads: a Ray release changed its format."""


@dataclass
class TuneState:
    """Tune's saved state as ``Tuner.restore`` will read it: the newest file of each kind."""

    experiment: Path
    search_gen: Path
    trials: dict[str, dict[str, Any]]
    """Trial id -> ``{"status", "config", "last_result"}``."""
    data: dict[str, Any] = field(repr=False)
    generator: dict[str, Any] = field(repr=False)


def read(tune_dir: Path) -> tuple[TuneState | None, list[str]]:
    """The newest whole experiment state and search-generator state, and the names of damaged files set aside (Tune
    would pick them: the newest file of each kind wins). None when nothing whole is left, or no ``tuner.pkl``."""
    set_aside: list[str] = []
    experiment = _newest_whole(tune_dir, EXPERIMENT_STATE, _read_json, set_aside)
    search_gen = _newest_whole(tune_dir, SEARCH_GEN_STATE, _read_pickle, set_aside)
    searcher = _newest_whole(tune_dir, SEARCHER_STATE, _read_pickle, set_aside)
    if experiment is None or search_gen is None or searcher is None:
        return None, [*set_aside, *set_aside_all(tune_dir, "damaged")]  # no half state for Tune to restore
    (experiment_path, data), (search_gen_path, generator) = experiment, search_gen
    try:
        trials = trials_of(data)
    except (KeyError, TypeError, ValueError):
        return None, set_aside
    return TuneState(experiment_path, search_gen_path, trials, data, generator), set_aside


def has_tuner(tune_dir: Path) -> bool:
    """Whether Tune saved the Tuner itself (``Tuner.restore`` reads it first)."""
    return (tune_dir / TUNER_FILE).is_file()


def trials_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each trial of an experiment state: its status, config and last result."""
    trials = {}
    for json_state, metadata in data["trial_data"]:
        trial, run = json.loads(json_state), json.loads(metadata)
        trials[str(trial["trial_id"])] = {
            "status": trial["status"],
            "config": trial.get("config") or {},
            "last_result": run.get("last_result") or {},
        }
    return trials


def with_finished(data: dict[str, Any], finished: set[str], tune_finished: tuple[str, ...]) -> dict | None:
    """The experiment state with these trials marked finished (``TERMINATED``) where Tune still shows them
    unfinished; None when none changes."""
    changed, trial_data = False, []
    for json_state, metadata in data["trial_data"]:
        trial = json.loads(json_state)
        if str(trial["trial_id"]) in finished and trial["status"] not in tune_finished:
            trial["status"] = "TERMINATED"
            json_state = json.dumps(trial, indent=2)
            changed = True
        trial_data.append([json_state, metadata])
    return {**data, "trial_data": trial_data} if changed else None


def total_samples(generator: dict[str, Any]) -> int:
    """How many trials the search generator has been asked for in all."""
    return int(generator.get("total_samples", 0))


def with_counter(generator: dict[str, Any], counter: int, live: set[str]) -> dict[str, Any]:
    """The search generator's state with its counter of trials made, and its searcher wrappers' live trials (the
    ``ConcurrencyLimiter``'s: a finished trial left there would hold its slot for good)."""
    state = {**generator, "counter": counter, "finished": False}
    for key, wrapper in generator.items():
        if key.startswith("name:") and isinstance(wrapper, dict) and "live_trials" in wrapper:
            state[key] = {**wrapper, "live_trials": set(live), "num_unfinished_live_trials": len(live)}
    return state


def check(tune_dir: Path) -> TuneState:
    """Tune's saved state of a live experiment, every field this module reads checked (``TuneStateChanged`` names
    the first one missing: the Ray release changed its format)."""
    for kind in (*KINDS, TUNER_FILE):
        if not list(tune_dir.glob(kind)):
            raise TuneStateChanged(f"Tune saved no {kind} in {tune_dir}")
    state, _ = read(tune_dir)
    if state is None:
        raise TuneStateChanged(f"Tune's saved state in {tune_dir} does not read as this module expects")
    for trial_id, trial in state.trials.items():
        if not trial["config"] or not trial["last_result"]:
            raise TuneStateChanged(f"trial {trial_id}: no config or last_result in the experiment state")
    for key in ("total_samples", "counter", "finished"):
        if key not in state.generator:
            raise TuneStateChanged(f"the search generator's state has no {key!r}")
    wrappers = [k for k, v in state.generator.items() if k.startswith("name:") and isinstance(v, dict)]
    if not any("live_trials" in state.generator[k] for k in wrappers):
        raise TuneStateChanged(
            "no searcher wrapper (ConcurrencyLimiter) with live_trials in the generator's state"
        )
    return state


def write_experiment(state: TuneState, data: dict[str, Any]) -> str:
    _replace(state.experiment, json.dumps(data).encode())
    return state.experiment.name


def write_search_gen(state: TuneState, generator: dict[str, Any]) -> str:
    import ray.cloudpickle as cloudpickle  # Ray's own pickler, as Tune wrote it; Ray loads only when resuming

    _replace(state.search_gen, cloudpickle.dumps(generator))
    return state.search_gen.name


def set_aside_all(tune_dir: Path, suffix: str) -> list[str]:
    """Rename every file of Tune's saved state so that Tune no longer finds it; their old names."""
    names = []
    for kind in KINDS:
        for path in sorted(tune_dir.glob(kind)):
            path.rename(path.with_name(f"{path.name}.{suffix}"))
            names.append(path.name)
    return names


def _newest_whole(tune_dir: Path, kind: str, read_file, set_aside: list[str]) -> tuple[Path, Any] | None:
    for path in sorted(tune_dir.glob(kind), reverse=True):
        try:
            return path, read_file(path)
        except Exception:  # cut short by a kill mid-copy: set aside, the next newest is a whole save
            path.rename(path.with_name(path.name + ".damaged"))
            set_aside.append(path.name)
    return None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _read_pickle(path: Path) -> Any:
    import ray.cloudpickle as cloudpickle  # Ray's own pickler, as Tune wrote it; Ray loads only when resuming

    with path.open("rb") as f:
        return cloudpickle.load(f)


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"tmp-{path.name}")
    tmp.write_bytes(data)
    tmp.replace(path)


__all__ = [
    "KINDS",
    "TuneState",
    "TuneStateChanged",
    "check",
    "has_tuner",
    "read",
    "set_aside_all",
    "total_samples",
    "trials_of",
    "with_counter",
    "with_finished",
    "write_experiment",
    "write_search_gen",
]

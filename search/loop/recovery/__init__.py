"""Recovery, in one room: what a search does to come back whole after its driver died or its files were damaged.

- ``status``: a trial's status derived from whichever record holds it, and the one mapping between the trials
  table's statuses, Optuna's trial states and Ray Tune's trial statuses;
- ``attributes``: every user attribute the search stores on Optuna trials;
- ``repair``: the trials table rebuilt from each trial's own files (``peft-search repair``);
- ``study``: a damaged Optuna study rebuilt from the table and the trials' configs;
- ``reconcile``: the search's four records compared before Tune restores anything, and the trials still owed;
- ``resume``: that a directory holds this very search, and the config it was started with;
- ``stale``: Optuna trials a dead driver left running, closed at the end;
- ``tune_state`` and ``optuna_storage``: what the room reads and writes of Ray's and Optuna's own state (Tune's
  saved-state files have no public API: each field is reached by one function, tested against a real Tuner).

The driver calls ``recover`` before a resumed search launches, and ``close_stale_trials`` when it finishes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from peft_search.search.loop.recovery.reconcile import Reconciled, reconcile
from peft_search.search.loop.recovery.repair import repair, table_is_readable
from peft_search.search.loop.recovery.resume import check_resumable, load_saved_config
from peft_search.search.loop.recovery.stale import close_stale_trials
from peft_search.search.loop.recovery.study import rebuild_study, study_is_damaged
from peft_search.search.results import storage
from peft_search.search.results.layout import TRAIN_DIR, TUNE_DIR, ResultsDir
from peft_search.search.settings.schema import SearchConfig
from peft_search.spaces.sampling import DefineByRun


def recover(
    cfg: SearchConfig, space: DefineByRun, results: ResultsDir, uri: str | None, echo: bool = True
) -> Reconciled:
    """Before a resumed search launches: a damaged trials table rebuilt from the trials' own records, a damaged
    study rebuilt from the table through the search's ``space`` (Tune's saved searcher, pointing at the old study's trials, then set aside), and
    the records reconciled; what Tune runs now."""
    if results.trials_path.exists() and not table_is_readable(results):
        _say(echo, repair(results.path))
    verdict = study_is_damaged(results)
    if verdict is not None:
        said = rebuild_study(cfg, space, results)
        _say(echo, f"the Optuna study was damaged ({verdict[:80]}); {said}")
    reconciled = _reconcile(cfg, results, uri, trust_tune=verdict is None)
    _say(echo, reconciled.line())
    return reconciled


def _reconcile(cfg: SearchConfig, results: ResultsDir, uri: str | None, trust_tune: bool) -> Reconciled:
    """Compare the search's records and fix the ones behind (``reconcile``). On an object store, Tune's state is
    reconciled in a local copy and what changed is copied back."""
    objectives = [o.metric for o in cfg.objectives]
    name, num_trials = cfg.name, cfg.search.num_trials
    if uri is None:
        return reconcile(results, results.tune_path, name, num_trials, objectives, trust_tune=trust_tune)
    with tempfile.TemporaryDirectory(prefix="tune-state-") as local:
        tune_uri = storage.join(uri, TUNE_DIR)
        storage.download_tree(tune_uri, Path(local))
        said = reconcile(results, Path(local), name, num_trials, objectives, trust_tune=trust_tune)
        storage.sync_back(Path(local), tune_uri, said.touched)
    for trial_id in said.dropped:  # the adapters live on the store; reconcile removed only local copies
        storage.remove_dir(uri, f"{TRAIN_DIR}/train-{trial_id}")
    return said


def _say(echo: bool, line: str) -> None:
    if echo:
        print(f"[peft-search] {line}", flush=True)


__all__ = [
    "Reconciled",
    "check_resumable",
    "close_stale_trials",
    "load_saved_config",
    "recover",
    "repair",
]

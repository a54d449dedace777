"""What the search reads and sets of Ray Tune's private state, where Ray has no public API for it, each in one
small function: the study, trial map, storage and sampler of Ray's ``OptunaSearch`` (which ``PeftOptunaSearch``
extends to tell Optuna each trial's status and to survive a resume), and a restored ``Tuner``'s run and tune configs
(a resume hands it this run's callbacks and searcher). ``tests/search/loop/recovery/test_private.py`` checks every
one against the installed Ray; when a release renames one, ``PrivateApiChanged`` says which and where.
"""

from __future__ import annotations

from typing import Any


class PrivateApiChanged(RuntimeError):
    """Ray no longer has a private attribute the search relies on."""


def _get(owner: Any, name: str, who: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        import ray

        raise PrivateApiChanged(
            f"{who} has no attribute {name} in ray {ray.__version__}: search.loop.recovery.private reads it; "
            "install the Ray release peft-search supports (pyproject.toml) or update that function"
        ) from None


def searcher_study(searcher) -> Any:
    """``OptunaSearch``'s Optuna study (None until Tune has set it up)."""
    return _get(searcher, "_ot_study", "OptunaSearch")


def searcher_trials(searcher) -> dict[str, Any]:
    """``OptunaSearch``'s map of Tune trial id -> the ``optuna.trial.Trial`` it asked for it."""
    return _get(searcher, "_ot_trials", "OptunaSearch")


def searcher_storage(searcher) -> Any:
    """``OptunaSearch``'s Optuna storage."""
    return _get(searcher, "_storage", "OptunaSearch")


def searcher_completed(searcher) -> set[str]:
    """The Tune trials ``OptunaSearch`` has told the study about."""
    return _get(searcher, "_completed_trials", "OptunaSearch")


def searcher_sampler(searcher) -> Any:
    """The sampler ``OptunaSearch`` asks with."""
    return _get(searcher, "_sampler", "OptunaSearch")


def set_searcher_sampler(searcher, sampler) -> None:
    """The sampler ``OptunaSearch`` and its study ask with from now on."""
    searcher_sampler(searcher)  # it still has one: the name is checked
    searcher._sampler = sampler
    searcher_study(searcher).sampler = sampler


def set_searcher_study(searcher, study, storage, trials: dict[str, Any]) -> None:
    """The study, storage and trial map ``OptunaSearch`` works with from now on."""
    for name in ("_ot_study", "_storage", "_ot_trials"):
        _get(searcher, name, "OptunaSearch")
    searcher._ot_study, searcher._storage, searcher._ot_trials = study, storage, trials


def hand_restored_tuner(tuner, callbacks: list, searcher) -> None:
    """A restored ``Tuner`` runs with this run's callbacks and searcher (the ones Tune pickled name the files where
    the search lived when it started, and it may have moved since): Tune has no public setter for either."""
    local = _get(tuner, "_local_tuner", "Tuner")
    local.get_run_config().callbacks = callbacks
    _get(local, "_tune_config", "TunerInternal").search_alg = searcher


__all__ = [
    "PrivateApiChanged",
    "hand_restored_tuner",
    "searcher_completed",
    "searcher_sampler",
    "searcher_storage",
    "searcher_study",
    "searcher_trials",
    "set_searcher_sampler",
    "set_searcher_study",
]

"""The study's trials by their number, through Optuna's public storage API (``BaseStorage``): a resume marks and
tells trials that a dead driver left RUNNING, which a ``FrozenTrial`` alone cannot change."""

from __future__ import annotations

from typing import Any

import optuna


def open_study(url: str, study_name: str | None) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """The study (``KeyError`` when the database holds none of that name; ``None``: its only one) and its storage."""
    storage = optuna.storages.RDBStorage(url)
    if study_name is None:  # named here: load_study would log that it guessed (at INFO, on the terminal)
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise KeyError(f"{url}: {len(names)} studies, not one")
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage), storage


def storage_trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of the study's trial ``number``."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def set_user_attr(
    storage: optuna.storages.BaseStorage, study_name: str, number: int, key: str, value: Any
) -> None:
    """A user attribute on the study's trial ``number`` (which must not be finished yet)."""
    storage.set_trial_user_attr(storage_trial_id(storage, study_name, number), key, value)


def trial(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int) -> optuna.trial.Trial:
    """The study's trial ``number`` as an ``optuna.trial.Trial`` (what ``study.ask`` returns), to report to."""
    return optuna.trial.Trial(study, storage_trial_id(storage, study.study_name, number))


__all__ = ["open_study", "set_user_attr", "storage_trial_id", "trial"]

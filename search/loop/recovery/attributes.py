"""Every user attribute the search stores on Optuna trials, named once: what the study holds besides Optuna's own
parameters, values and states, so ``optuna.load_study`` alone shows what ran, and a resumed search can match the
study's trials to Tune's.

The explicit candidates' name (``CANDIDATE``) is set where the space enqueues them (``peft_search.spaces``, which
cannot import the search); it is named here too.
"""

from __future__ import annotations

from typing import Any

from peft_search.spaces.sampling import CANDIDATE_ATTR

CANDIDATE = CANDIDATE_ATTR
"""An explicit candidate's name, on the trial enqueued for it."""
CONFIG = "peft_search.config"
"""The resolved config the trial ran (``CONFIG_KEYS`` of the Tune trial's config)."""
CONFIG_KEYS = ("candidate", "method", "quantization", "peft_config", "learning_rate", "training")
TUNE_TRIAL = "peft_search.tune_trial_id"
"""The id of the Tune trial it became: a resumed search finds a trial's Optuna record by it."""
STATUS = "peft_search.status"
"""``stopped_early`` or ``infeasible``: what the study's own state does not tell apart (PRUNED and COMPLETE)."""
ERROR = "peft_search.error"
"""Why an infeasible trial could not run."""
STOPPED_AT_STEP = "peft_search.stopped_at_step"
"""The step an early-stopped trial was stopped at."""
RUNG_PREFIX = "peft_search.rung."
"""An early-stopped trial's part-way value of each objective (``RUNG_PREFIX + metric``)."""
STALE = "peft_search.stale"
"""Asked by a driver that died before the trial was saved anywhere else (FAIL; its config asked again)."""
WARM_START = "peft_search.warm_start"
"""Where a trial carried over from an earlier search came from (``search.warm_start``: ``PATH#NUMBER``)."""
ERROR_CHARS = 500
"""How much of an error's text the study keeps."""


def config_attr(config: dict[str, Any]) -> dict[str, Any]:
    """``CONFIG``'s value for a Tune trial's config."""
    return {k: config[k] for k in CONFIG_KEYS if k in config}


def outcome_attrs(
    status: str, *, step: int | None = None, rung: dict[str, float] | None = None, error: str = ""
) -> dict[str, Any]:
    """The attributes that record a trial's outcome beside its Optuna state: a stopped trial's step and part-way
    values, an infeasible one's reason; none for the others."""
    if status == "stopped_early":
        attrs: dict[str, Any] = {STATUS: "stopped_early"}
        if step is not None:
            attrs[STOPPED_AT_STEP] = int(step)
        attrs.update({RUNG_PREFIX + m: float(v) for m, v in (rung or {}).items()})
        return attrs
    if status == "infeasible":
        return {STATUS: "infeasible", ERROR: str(error)[:ERROR_CHARS]}
    return {}


def rung_values(attrs: dict[str, Any], objectives: list[str]) -> dict[str, float]:
    """An early-stopped trial's part-way values, as ``outcome_attrs`` stored them."""
    return {m: attrs[RUNG_PREFIX + m] for m in objectives if RUNG_PREFIX + m in attrs}


__all__ = [
    "CANDIDATE",
    "CONFIG",
    "CONFIG_KEYS",
    "ERROR",
    "RUNG_PREFIX",
    "STALE",
    "STATUS",
    "STOPPED_AT_STEP",
    "TUNE_TRIAL",
    "WARM_START",
    "config_attr",
    "outcome_attrs",
    "rung_values",
]

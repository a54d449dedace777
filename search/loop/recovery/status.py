"""A trial's status, derived in one place from whichever record holds it, and what the study is told for each.

The trials table's statuses beside Optuna's trial states and Ray Tune's trial statuses:

| table           | Optuna                                              | Tune                                      |
| --------------- | --------------------------------------------------- | ----------------------------------------- |
| `complete`      | COMPLETE, the objectives' values                    | TERMINATED, its last result complete      |
| `infeasible`    | COMPLETE, the worst values, ``STATUS`` infeasible   | TERMINATED, its last result infeasible    |
| `stopped_early` | PRUNED, ``STATUS`` stopped_early                    | TERMINATED, its last result a rung's      |
| `failed`        | FAIL                                                | ERROR (or TERMINATED without a result)    |
| `running`       | RUNNING                                             | PENDING, RUNNING, PAUSED                  |

A trial's own report says what it is (``STATUS_KEY``): ``from_result`` reads it, ``from_error`` reads an error
(``InfeasibleTrialError`` anywhere in its chain: infeasible), ``from_trial_files`` a trial's files under
``tune*/trial-ID/``, ``from_tune`` Tune's saved record of it, ``from_study`` the study's; ``to_study`` is what the
study is told of a finished trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.trial import TrialState

from peft_search.search.loop.recovery import attributes
from peft_search.search.redact import redact_text
from peft_search.search.results.records import ERROR_KEY, RUNG_KEY, STATUS_KEY, TrialStatus

FINISHED: tuple[TrialStatus, ...] = ("complete", "stopped_early", "infeasible", "failed")
"""Statuses a trial keeps: it is never run again."""
TUNE_FINISHED = ("TERMINATED", "ERROR")
"""Tune's statuses of a trial that will not run again."""
NOTE_CHARS = 500


def from_error(error: BaseException | None) -> tuple[TrialStatus, str]:
    """``(status, one-line message)`` for a trial's error: ``infeasible`` when the config itself cannot run."""
    if error is None:
        return "failed", "trial stopped without a result"
    seen: list[BaseException] = []
    node: BaseException | None = error
    while node is not None and node not in seen:
        seen.append(node)
        node = getattr(node, "cause", None) or node.__cause__
    infeasible = any("InfeasibleTrialError" in {c.__name__ for c in type(e).__mro__} for e in seen)
    root = seen[-1]
    lines = [ln.strip() for ln in str(root).strip().splitlines() if ln.strip()]
    message = lines[-1] if lines else type(root).__name__
    if not message.startswith(type(root).__name__) and ":" not in message[:40]:
        message = f"{type(root).__name__}: {message}"
    # Error text can quote a config value or an environment variable: never a credential in the table.
    return ("infeasible" if infeasible else "failed"), redact_text(message)[:NOTE_CHARS]


def from_result(result: dict[str, Any]) -> tuple[TrialStatus, str]:
    """A trial that ended with this last result: what the worker said (``STATUS_KEY``), or, when its last result
    was a part-way one, stopped by the early-stopping scheduler."""
    said = result.get(STATUS_KEY)
    if said == "infeasible":
        return "infeasible", redact_text(str(result.get(ERROR_KEY, "")))[:NOTE_CHARS]
    if said == "running":  # its last report was a rung's: the scheduler ended it there
        note = (
            f"stopped early at step {result.get(RUNG_KEY)}: dominated there (accuracy "
            f"{result.get('accuracy', float('nan')):.3f} on {result.get('eval_rows')} held-out rows)"
        )
        return "stopped_early", note
    if said == "complete":
        return "complete", ""
    return "failed", f"trial ended without a final result (last reported status {said!r})"


def from_trial_files(last: dict[str, Any] | None, error: BaseException | None) -> tuple[TrialStatus, str]:
    """A trial by its own files: its error (failed or infeasible), else its last result; ``running`` for one that
    was cut off (no result yet, or a rung's result that Tune had not ended it at: the driver died)."""
    if error is not None:
        return from_error(error)
    if last is None:
        return "running", ""
    status, note = from_result(last)
    if status == "stopped_early" and not last.get("done", False):
        return "running", ""
    return status, note


def from_tune(tune_status: str, last_result: dict[str, Any]) -> tuple[TrialStatus, str] | None:
    """A trial by Tune's saved record of it (its status and last result); None while Tune would run it again."""
    if tune_status == "ERROR":
        return "failed", "trial failed"
    if tune_status == "TERMINATED":
        return from_result(last_result)
    return None


def from_study(state: TrialState, attrs: dict[str, Any]) -> TrialStatus:
    """A finished trial by the study's record of it (its state, and ``attributes.STATUS``)."""
    if state == TrialState.COMPLETE:
        return "infeasible" if attrs.get(attributes.STATUS) == "infeasible" else "complete"
    if state == TrialState.PRUNED:
        return "stopped_early"
    return "failed"


def to_study(
    status: TrialStatus, values: Sequence[float | None], worst: Sequence[float]
) -> tuple[TrialState, list[float] | None]:
    """What the study is told of a finished trial: its state, and its objectives' values where it has them (an
    infeasible trial completes with the worst of each, so the sampler moves away from it:
    ``search.worker.infeasible``)."""
    if status == "stopped_early":
        return TrialState.PRUNED, None
    if status == "infeasible":
        return TrialState.COMPLETE, [float(v) for v in worst]
    if status == "complete" and all(v is not None and math.isfinite(v) for v in values):
        return TrialState.COMPLETE, [float(v) for v in values]  # type: ignore[arg-type]
    return TrialState.FAIL, None


__all__ = [
    "FINISHED",
    "TUNE_FINISHED",
    "from_error",
    "from_result",
    "from_study",
    "from_trial_files",
    "from_tune",
    "to_study",
]

"""``peft-search repair DIR``: rebuild a damaged or missing trials table (and predictions) from each trial's own
record, the files Ray Tune keeps per trial (``tune*/trial-ID/params.json`` and ``result.json``).

What the table would have said is what it says again: a trial's status from its last reported result (complete,
stopped early, infeasible) or its error file (failed), "running" for a trial that was cut off mid-run (a resume
runs it again), and the held-out predictions of every complete trial.
"""

from __future__ import annotations

import json
from pathlib import Path

import cloudpickle

from peft_search.search.errors import DamagedFileError
from peft_search.search.loop.recovery import attributes, status
from peft_search.search.loop.recovery.optuna_storage import open_study
from peft_search.search.results.layout import OPTUNA_FILE, ResultsDir
from peft_search.search.results.records import PREDICTIONS_KEY, TrialResult


def table_is_readable(results: ResultsDir) -> bool:
    try:
        results.read_trials()
        results.read_predictions()
    except (DamagedFileError, FileNotFoundError):
        return False
    return True


def rebuild(results: ResultsDir) -> tuple[list[TrialResult], dict[str, dict[str, list[int]]]]:
    """The trials table's records and the complete trials' predictions, from Tune's per-trial files."""
    records: dict[str, TrialResult] = {}
    predictions: dict[str, dict[str, list[int]]] = {}
    stale = _stale_numbers(results)
    for trial_dir in sorted(results.path.glob("tune*/trial-*")):
        record, rows = trial_record(trial_dir)
        if record is None or (record.status == "running" and record.optuna_trial in stale):
            continue  # cut off, and a resume already asked for its config again
        records[record.trial_id] = record
        if rows and record.status == "complete":
            predictions[record.trial_id] = rows
    return list(records.values()), predictions


def _stale_numbers(results: ResultsDir) -> set[int]:
    """The Optuna trials a resume marked stale (re-queued): the Tune trials they became are not in the table."""
    if not (results.path / OPTUNA_FILE).is_file():
        return set()
    try:  # the search's one study
        study, _ = open_study(results.optuna_url, None)
    except Exception:  # a damaged study: the table is rebuilt from the trials' files alone
        return set()
    return {t.number for t in study.get_trials(deepcopy=False) if attributes.STALE in t.user_attrs}


def trial_record(trial_dir: Path) -> tuple[TrialResult | None, dict | None]:
    """A trial's record from its own files, and its held-out rows (None where it has none)."""
    try:
        config = json.loads((trial_dir / "params.json").read_text())
    except (OSError, ValueError):
        return None, None  # never started: Tune had not written its config yet
    trial_id = trial_dir.name.removeprefix("trial-")
    last = _last_result(trial_dir / "result.json")
    error = _error(trial_dir)
    said, note = status.from_trial_files(last, error)
    if error is not None or last is None:
        return TrialResult.from_report(trial_id, said, config, {}, note), None
    return TrialResult.from_report(trial_id, said, config, last, note), last.get(PREDICTIONS_KEY)


def _last_result(path: Path) -> dict | None:
    """The trial's last complete line of results (a line cut by a crash is ignored)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _error(trial_dir: Path) -> BaseException | None:
    pickled, text = trial_dir / "error.pkl", trial_dir / "error.txt"
    if pickled.is_file():
        try:
            with pickled.open("rb") as f:
                return cloudpickle.load(f)
        except Exception:  # unpickling needs the classes it names; the text says the same
            pass
    if text.is_file():
        return RuntimeError(text.read_text())
    return None


def repair(search_dir: str | Path, force: bool = False) -> str:
    """Rebuild the table and predictions when they are damaged or missing (or ``force``); what was done, in words."""
    results = ResultsDir(search_dir)
    results.require_search()
    if table_is_readable(results) and not force:
        return (
            f"{results.trials_path.name} and predictions read fine; nothing to repair (--force rebuilds them)"
        )
    records, predictions = rebuild(results)
    if not records:
        raise DamagedFileError(
            f"{search_dir}: no trial records under tune*/trial-*/ to rebuild the table from; start the search again"
        )
    results.write_trials(records)
    results.write_predictions(predictions)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    said = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return (
        f"rebuilt {results.trials_path.name} from the trials' own records: {len(records)} trials ({said}), "
        f"held-out predictions of {len(predictions)}"
    )

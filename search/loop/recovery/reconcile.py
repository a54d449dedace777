"""Resume reconciles instead of trusting: what each record of a killed search says is compared before Tune
restores anything, and the trials still owed are counted from that, not from a separately saved counter.

A search keeps four records, written at different moments:

- the trials table and the Optuna study are written by the driver as things happen;
- Ray Tune's state (its trial list, the searcher, the search generator's trial counter) is saved to a staging
  directory and copied to ``tune/`` in the background, file by file, so a kill leaves it behind the other two
  and sometimes a mix of two saves (a counter that disagrees with the trial list: a trial lost or one too many);
- each trial's own files under ``tune/trial-ID/`` (its config and results), copied the same way.

So, for every trial any record knows:

- finished (complete, stopped early, infeasible, failed) in any record: kept, never run again. Its row is in the
  table (rebuilt from its own files when the table lacks it, or, when only the study knows its outcome, from the
  study), the study knows its outcome, and a trial Tune's state still shows unfinished is marked finished there;
- unfinished, in Tune's state: Tune runs it again (from its mid-trial checkpoint when it has one);
- unfinished and unknown to Tune's state (it started after Tune last saved), or an Optuna trial that was asked
  and never became a trial: marked stale in the study (FAIL, with the reason) and re-queued there with the same
  parameters, so the resumed search asks for exactly that config again; its table row and adapter go.

The trials still owed are ``num_trials`` less the finished ones and those Tune runs again; Tune's search generator
gets its counter from that. When Tune's state cannot be read whole, the damaged files are set aside
(``*.damaged``) and a new Tuner asks for the trials still owed; so too when the study was rebuilt (``recovery.study``:
Tune's saved searcher points at the old study's trials), with the suffix ``*.superseded``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from peft_search.search.loop.recovery import attributes, status, tune_state
from peft_search.search.loop.recovery.optuna_storage import open_study, set_user_attr
from peft_search.search.loop.recovery.repair import trial_record
from peft_search.search.loop.recovery.tune_state import TuneState
from peft_search.search.results.layout import OPTUNA_FILE, ResultsDir
from peft_search.search.results.metrics import get_metric
from peft_search.search.results.records import OPTUNA_TRIAL_KEY, RUNG_KEY, TrialResult


@dataclass
class Reconciled:
    restore: bool
    """Tune's state reads whole: ``Tuner.restore`` it (else a new Tuner asks for ``remaining`` trials)."""
    remaining: int
    """New trials still to ask for."""
    finished: int = 0
    rerun: int = 0
    """Unfinished trials Tune runs again from its state."""
    requeued: int = 0
    stale: int = 0
    set_aside: list[str] = field(default_factory=list)
    why: str = "damaged"
    touched: list[str] = field(default_factory=list)
    """Files of Tune's state this wrote, renamed or set aside (names in ``tune_dir``): what a search on an object
    store copies back."""
    dropped: list[str] = field(default_factory=list)
    """Trials that run again from scratch: their adapters went from ``train/`` (a search on an object store removes
    them there too)."""

    def line(self) -> str:
        """``restored 4 finished trials, re-queued 1, marked 1 stale``, and what runs now."""
        parts = [f"restored {self.finished} finished trial(s)", f"re-queued {self.requeued}"]
        parts.append(f"marked {self.stale} stale")
        then = []
        if self.rerun:
            then.append(f"{self.rerun} to run again")
        if self.remaining:
            then.append(f"{self.remaining} new to ask for")
        said = ", ".join(parts) + (f"; {', '.join(then)}" if then else "; nothing left to run")
        if self.set_aside:
            said += f" (Tune's saved state was {self.why}, set aside: {', '.join(self.set_aside)}; a new Tuner runs on)"
        return said


def reconcile(
    results: ResultsDir,
    tune_dir: Path,
    study_name: str,
    num_trials: int,
    objectives: list[str],
    *,
    trust_tune: bool = True,
    why: str = "superseded by the rebuilt study",
) -> Reconciled:
    """Compare the search's records, fix the ones behind, and say what runs now (see the module's docstring).
    ``tune_dir`` holds Tune's state: the search's own ``tune/``, or a local copy of one on an object store;
    ``trust_tune`` False sets it aside whole, for the reason ``why``."""
    if trust_tune:
        state, set_aside = tune_state.read(tune_dir)
        why = "damaged"
        if state is not None and not tune_state.has_tuner(tune_dir):  # Tune restores that Tuner first
            return reconcile(
                results,
                tune_dir,
                study_name,
                num_trials,
                objectives,
                trust_tune=False,
                why="incomplete (no tuner.pkl)",
            )
    else:
        state, set_aside = None, tune_state.set_aside_all(tune_dir, why.split()[0])
    table = {r.trial_id: r for r in results.read_records()} if results.trials_path.exists() else {}
    own = _own_records(tune_dir)
    study, storage = _study(results, study_name)
    told = _told(study)

    ids = set(table) | set(own) | (set(state.trials) if state else set())
    finished: dict[str, TrialResult] = {}
    for trial_id in ids:
        record = _finished_record(trial_id, table, own, state)
        if record is None and trial_id in told:
            record = _study_record(results, trial_id, told[trial_id], table.get(trial_id), objectives)
        if record is not None:
            finished[trial_id] = record
    tune_known = set(state.trials) if state else set()
    rerun = {i for i in tune_known if i not in finished}
    gone = {i for i in ids if i not in finished and i not in rerun}

    # The table: every finished trial, the ones Tune runs again as they were, nothing of the trials that are gone.
    rows = {i: r for i, r in table.items() if i not in gone}
    added = {
        i: r for i, r in finished.items() if table.get(i) is None or table[i].status not in status.FINISHED
    }
    rows.update(added)
    if rows.keys() != table.keys() or added:
        _write_table(results, rows, added, own)
    for trial_id in gone:
        _drop_adapter(results, trial_id)

    done = sum(1 for r in finished.values() if r.repeat_of is None)
    remaining = max(0, num_trials - done - len(rerun))
    requeued = stale = 0
    if study is not None:
        stale, requeued = _reconcile_study(
            study, storage, finished, rerun, gone, table, own, state, objectives, remaining
        )
    touched = [*set_aside, *(f"{n}.{why.split()[0]}" for n in set_aside)]
    if state is not None:
        written = _set_counter(state, finished, remaining)
        if written is None:  # the counter cannot say it: what Tune would run again is asked for again instead
            return reconcile(
                results, tune_dir, study_name, num_trials, objectives, trust_tune=False, why="inconsistent"
            )
        touched += written
    return Reconciled(
        state is not None, remaining, done, len(rerun), requeued, stale, set_aside, why, touched, sorted(gone)
    )


def _own_records(tune_dir: Path) -> dict[str, tuple[TrialResult, dict | None]]:
    """Each trial's record from its own files (``repair`` reads them the same way)."""
    own = {}
    for trial_dir in sorted(tune_dir.glob("trial-*")):
        record, rows = trial_record(trial_dir)
        if record is not None:
            own[record.trial_id] = (record, rows)
    return own


def _study(results: ResultsDir, study_name: str):
    """The study and its storage (None, None where the driver died before it made the study)."""
    if not (results.path / OPTUNA_FILE).exists():
        return None, None
    try:
        return open_study(results.optuna_url, study_name)
    except KeyError:
        return None, None


def _told(study) -> dict[str, Any]:
    """Tune trial id -> its Optuna trial, for the trials the study holds an outcome of (those a resume marked stale
    aside: their config was asked again)."""
    if study is None:
        return {}
    return {
        t.user_attrs[attributes.TUNE_TRIAL]: t
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished()
        and attributes.TUNE_TRIAL in t.user_attrs
        and attributes.STALE not in t.user_attrs
    }


def _study_record(
    results: ResultsDir, trial_id: str, frozen, row: TrialResult | None, objectives: list[str]
) -> TrialResult:
    """A finished trial only the study knows the outcome of: the driver was told and died before the table was
    written (the table is written first for complete and early-stopped trials, so in practice a failed one). Its
    row holds what the study holds: the config, the objectives' values or the rung's, the status."""
    attrs = frozen.user_attrs
    config = {**attrs.get(attributes.CONFIG, {}), OPTUNA_TRIAL_KEY: frozen.number}
    if row is not None:
        config["seed"] = row.seed
    said = status.from_study(frozen.state, attrs)
    if said == "infeasible":
        return TrialResult.from_report(trial_id, said, config, {}, str(attrs.get(attributes.ERROR, "")))
    if said == "complete":
        result: dict[str, Any] = dict(zip(objectives, frozen.values, strict=True))
        adapter = next((results.train_path / f"train-{trial_id}").glob("*/adapter_config.json"), None)
        if adapter is not None:
            result["checkpoint_path"] = str(adapter.parent)
        return TrialResult.from_report(trial_id, said, config, result)
    if said == "stopped_early":
        result = {
            **attributes.rung_values(attrs, objectives),
            RUNG_KEY: attrs.get(attributes.STOPPED_AT_STEP, 0),
        }
        return TrialResult.from_report(trial_id, said, config, result, "stopped early at a rung")
    return TrialResult.from_report(
        trial_id, said, config, {}, "trial failed; its error was lost with the driver that ran it"
    )


def _finished_record(
    trial_id: str,
    table: dict[str, TrialResult],
    own: dict[str, tuple[TrialResult, dict | None]],
    state: TuneState | None,
) -> TrialResult | None:
    """The trial's finished record, from whichever record has it (the table first: it is the fullest)."""
    if trial_id in table and table[trial_id].status in status.FINISHED:
        return table[trial_id]
    if trial_id in own and own[trial_id][0].status in status.FINISHED:
        return own[trial_id][0]
    if state is None or trial_id not in state.trials:
        return None
    trial = state.trials[trial_id]
    said = status.from_tune(trial["status"], trial["last_result"])
    if said is None:
        return None
    result = trial["last_result"] if trial["status"] != "ERROR" else {}
    return TrialResult.from_report(trial_id, said[0], trial["config"], result, said[1])


def _write_table(
    results: ResultsDir,
    rows: dict[str, TrialResult],
    added: dict[str, TrialResult],
    own: dict[str, tuple[TrialResult, dict | None]],
) -> None:
    predictions = {i: held for i, held in results.prediction_rows().items() if i in rows}
    for trial_id, record in added.items():
        held_out = own.get(trial_id, (None, None))[1]
        if record.status == "complete" and held_out and trial_id not in predictions:
            predictions[trial_id] = held_out
    results.write_trials(rows.values())
    results.write_predictions(predictions)


def _drop_adapter(results: ResultsDir, trial_id: str) -> None:
    """The adapter a trial that runs again from scratch may have saved before the kill."""
    target = results.train_path / f"train-{trial_id}"
    if target.is_dir():
        shutil.rmtree(target)


def _reconcile_study(
    study, storage, finished, rerun, gone, table, own, state, objectives, slots
) -> tuple[int, int]:
    """Tell the study what finished trials it still shows running; mark the gone ones stale and re-queue them
    (as many as there are ``slots`` left for new trials)."""
    number_of = {}  # Optuna trial number -> Tune trial id, from every record's config
    for trial_id in finished.keys() | rerun | gone:
        number = _optuna_number(trial_id, table, own, state)
        if number is not None:
            number_of[number] = trial_id
    stale = requeued = 0
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = frozen.user_attrs.get(attributes.TUNE_TRIAL) or number_of.get(frozen.number)
        if trial_id in rerun:
            continue  # Tune runs it again; its searcher tells the study when it ends
        if trial_id in finished:
            _tell(study, storage, frozen.number, finished[trial_id], objectives)
            continue
        # Asked, and then never a trial Tune knows or finished: ask for it again, as it was where its config is
        # whole (the searcher recorded the ask, or it was queued whole: a candidate). A driver killed while its
        # sampler drew the config left part of it; queued, the rest would be drawn from another point of the slot's
        # sampler: it is asked afresh instead, and its slot's sampler draws what an uninterrupted search drew.
        whole = attributes.CONFIG in frozen.user_attrs
        params = frozen.params if whole else frozen.system_attrs.get("fixed_params")
        mark_stale(
            study, storage, frozen.number, "re-queued on resume" if params else "asked again on resume"
        )
        stale += 1
        if requeued < slots and params:
            keep = {k: v for k, v in frozen.user_attrs.items() if k == attributes.CANDIDATE}
            study.enqueue_trial(params, user_attrs=keep, skip_if_exists=False)
            requeued += 1
    return stale, requeued


def mark_stale(study, storage, number: int, then: str) -> None:
    """A RUNNING trial a dead driver asked and nothing else recorded: FAIL, with the reason (Optuna cannot delete
    a trial)."""
    why = f"asked by a driver that died before Ray Tune saved it; {then}"
    set_user_attr(storage, study.study_name, number, attributes.STALE, why)
    study.tell(number, state=optuna.trial.TrialState.FAIL)


def _optuna_number(trial_id, table, own, state) -> int | None:
    if trial_id in table and table[trial_id].repeat_of is not None:
        return None  # a seed repeat carries its original's number; the study holds no trial of its own for it
    if trial_id in table and table[trial_id].optuna_trial is not None:
        return int(table[trial_id].optuna_trial)
    if trial_id in own and own[trial_id][0].optuna_trial is not None:
        return int(own[trial_id][0].optuna_trial)
    if state is not None and trial_id in state.trials:
        number = state.trials[trial_id]["config"].get(OPTUNA_TRIAL_KEY)
        return None if number is None else int(number)
    return None


def _tell(study, storage, number: int, record: TrialResult, objectives: list[str]) -> None:
    """The outcome of a finished trial, told as the searcher tells it (``PeftOptunaSearch.on_trial_complete``)."""
    worst = [get_metric(m).worst for m in objectives]
    values = [record.metrics.get(m) for m in objectives]
    state, told = status.to_study(record.status, values, worst)
    rung = {m: v for m, v in zip(objectives, values, strict=True) if v is not None}
    attrs = attributes.outcome_attrs(
        record.status, step=record.stopped_at_step, rung=rung, error=record.error
    )
    for key, value in attrs.items():
        set_user_attr(storage, study.study_name, number, key, value)
    study.tell(number, told, state=state)


def _set_counter(state: TuneState, finished: dict[str, TrialResult], remaining: int) -> list[str] | None:
    """Write Tune's state back as the records say: trials it shows unfinished that finished are finished there;
    the search generator's counter leaves exactly ``remaining`` new trials; the concurrency limiter's live trials
    are the ones Tune runs again (a finished trial left there would hold its slot for good, and the search would
    wait forever). The files written; None if the counter cannot say it."""
    counter = tune_state.total_samples(state.generator) - remaining
    if counter < 0:
        return None
    written = []
    data = tune_state.with_finished(state.data, set(finished), status.TUNE_FINISHED)
    if data is not None:
        written.append(tune_state.write_experiment(state, data))
    live = {
        i for i, t in state.trials.items() if i not in finished and t["status"] not in status.TUNE_FINISHED
    }
    generator = tune_state.with_counter(state.generator, counter, live)
    if generator != state.generator:
        written.append(tune_state.write_search_gen(state, generator))
    return written

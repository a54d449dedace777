"""The trials table as a Tune callback: one ``TrialResult`` per trial, rewritten as trials start and end so the
table can be read mid-search.

What a step of Tune's loop changed is written in ``on_step_end``, except a trial's end: that is written as its
final result arrives (``on_trial_result``), before Tune tells the searcher and so the study (Tune tells the searcher
first, then the callbacks' ``on_trial_complete``). A kill between the two would otherwise leave the study holding an
outcome the table lacks, with the trial's predictions only in the driver's memory. Tune's own saved state lags behind
the table (it is saved every 10 s or more and copied in the background), so a resume first reconciles the records
(``reconcile``): a trial the table shows finished is never run again, whatever Tune's state says. A trial Tune's
state shows finished that the table lacks or shows running is filled in, at the resumed search's first step, from the
result Tune restored.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ray import tune

from peft_search.search.loop.progress import ProgressBar
from peft_search.search.loop.recovery import status as statuses
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import get_metric
from peft_search.search.results.records import (
    PREDICTIONS_KEY,
    STATUS_KEY,
    TrialResult,
    TrialStatus,
)


def _trial_error(trial) -> BaseException | None:
    """The trial's exception. At callback time Tune has written it to the trial's local staging directory only."""
    import cloudpickle

    path = trial.pickled_error_file
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    path = trial.error_file
    if path and os.path.exists(path):
        return RuntimeError(Path(path).read_text())
    return None


class TrialTable(tune.Callback):
    """Records every trial (config, status, metrics, adapter path) in the results directory's trials table."""

    def __init__(
        self,
        results: ResultsDir,
        num_trials: int,
        objectives: Sequence[str] = ("accuracy", "trainable_params", "train_time_s"),
        echo: bool = True,
        on_write: Callable[[], None] | None = None,
    ):
        self.results = results
        self.shown = list(dict.fromkeys([*objectives, "train_time_s"]))
        """Metrics printed as each trial completes: the search's objectives and its training time."""
        self.records: dict[str, TrialResult] = {}
        self.predictions: dict[str, dict[str, list[int]]] = {}
        """Trial id -> its held-out rows (``PREDICTIONS_KEY``), for complete trials."""
        self.num_trials = num_trials
        self.first = (objectives[0], get_metric(objectives[0]).direction) if objectives else None
        """The first objective and its better way: the best so far is printed by it."""
        self.echo = echo
        self.on_write = on_write  # e.g. mirroring the table to an object store
        self._started, self._done_before = time.monotonic(), 0
        self._dirty = self._dirty_predictions = False
        self._reconciled = False
        self._ended_here: set[str] = set()
        """Trials this run recorded as ended from their final result (``on_trial_result``)."""
        self.bar: ProgressBar | None = None

    def setup(self, **info):
        """Keep the rows of an earlier run of this search (a resumed one): its finished trials stay in the table."""
        self._started = time.monotonic()
        if self.results.trials_path.exists() and not self.records:
            self.records = {r.trial_id: r for r in self.results.read_records()}
            self.predictions = self.results.prediction_rows()
        self._done_before = self._done()
        if self.echo:
            self.bar = ProgressBar(self.num_trials, self._done_before)

    def on_step_begin(self, iteration, trials, **info):
        if not self._reconciled:  # once per run: a resumed search's first step
            self._reconciled = True
            self._fill_in(trials)

    def on_step_end(self, iteration, trials, **info):
        self.flush()  # Tune has saved its state for this step: the table may now say what it knows
        if self.bar is not None:
            self.bar.tick()

    def on_experiment_end(self, trials, **info):
        self.flush()
        if self.bar is not None:
            self.bar.close()

    def _fill_in(self, trials) -> None:
        """Finished trials Tune restored that the table still shows running (or lacks): recorded from their result."""
        for trial in trials:
            known = self.records.get(trial.trial_id)
            if known is not None and known.status != "running":
                continue
            if trial.status == "TERMINATED" and trial.last_result:
                self._ended(trial, quiet=True)
            elif trial.status == "ERROR":
                status, message = statuses.from_error(_trial_error(trial))
                self._record(trial, status, message)

    def on_trial_start(self, iteration, trials, trial, **info):
        record = self._record(trial, "running")
        self._say(f"trial {trial.trial_id} started: {_what(record)} {record.peft_config}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """A trial's last result (the worker's final one, or a rung's the scheduler stops it at): its row is written
        now, before Tune tells the searcher (and so the study) that the trial ended."""
        if result.get(STATUS_KEY) in ("complete", "infeasible") or result.get("done"):
            self._ended(trial, result=result)
            self._ended_here.add(trial.trial_id)
            self.flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id not in self._ended_here:  # recorded from its final result already
            self._ended(trial)

    def _ended(self, trial, quiet: bool = False, result: dict | None = None) -> None:
        result = (trial.last_result or {}) if result is None else result
        status, note = statuses.from_result(result)
        rows = result.get(PREDICTIONS_KEY)
        if status == "complete" and rows:
            self.predictions[trial.trial_id] = rows
            self._dirty_predictions = True  # written only when a trial adds its rows
        record = self._record(trial, status, note, result)
        if quiet:
            return
        self._say(
            f"trial {self._done()}/{self.num_trials} {status}: {_what(record)}{self._outcome(record)}"
            f"{self._progress()}"
        )
        self._update_bar()

    def on_trial_error(self, iteration, trials, trial, **info):
        status, message = statuses.from_error(_trial_error(trial))
        record = self._record(trial, status, message)
        self._say(
            f"trial {self._done()}/{self.num_trials} {status}: {_what(record)}: {message}{self._progress()}"
        )
        self._update_bar()

    def _update_bar(self) -> None:
        """The bar shows what the last line said: trials done, time left, the best so far."""
        if self.bar is not None:
            self.bar.update(self._done(), "; ".join(p for p in self._outlook() if p))

    def _progress(self) -> str:
        """`` | 1m50s elapsed, about 3m40s left; best accuracy 0.887 (lora, int8)``: the search so far."""
        left, best = self._outlook()
        text = " | " + ", ".join(
            [f"{_clock(time.monotonic() - self._started)} elapsed", *([left] if left else [])]
        )
        return f"{text}; {best}" if best else text

    def _outlook(self) -> tuple[str | None, str | None]:
        """``("about 3m40s left", "best accuracy 0.887 (lora, int8)")``, each None until it is known."""
        elapsed = time.monotonic() - self._started
        done = self._done()
        fresh, remaining = done - self._done_before, self.num_trials - done
        left = f"about {_clock(elapsed / fresh * remaining)} left" if fresh > 0 and remaining > 0 else None
        best = self._best()
        return left, (f"best {best[0]} {best[1]}" if best else None)

    def _best(self) -> tuple[str, str] | None:
        if self.first is None:
            return None
        name, direction = self.first
        scored = [
            (float(r.metrics[name]), r)
            for r in self.records.values()
            if r.status == "complete"
            and isinstance(r.metrics.get(name), (int, float))
            and math.isfinite(float(r.metrics[name]))
        ]
        if not scored:
            return None
        value, record = (max if direction == "max" else min)(scored, key=lambda p: p[0])
        return name, f"{get_metric(name).format(value)} ({record.method}, {record.quantization})"

    def _done(self) -> int:
        return sum(r.status != "running" for r in self.records.values())

    def _record(self, trial, status: TrialStatus, error: str = "", result: dict | None = None) -> TrialResult:
        result = (trial.last_result or {}) if result is None else result
        record = TrialResult.from_report(trial.trial_id, status, trial.config, result, error)
        self.records[record.trial_id] = record
        self._dirty = True
        return record

    def _outcome(self, record: TrialResult) -> str:
        if record.status == "complete":
            values = (f"{name}={get_metric(name).format(record.metrics.get(name))}" for name in self.shown)
            return " " + " ".join(values)
        return f": {record.error}" if record.error else ""

    def _say(self, text: str) -> None:
        if not self.echo:
            return
        if self.bar is not None:
            self.bar.say(f"[peft-search] {text}")
        else:
            print(f"[peft-search] {text}", flush=True)

    def flush(self) -> None:
        """Write what changed since the last write (Tune calls it at the end of each step)."""
        if self._dirty_predictions:
            self.results.write_predictions(self.predictions)
            self._dirty_predictions = False
        if self._dirty:
            self.write()

    def write(self) -> None:
        self._dirty = False
        self.results.write_trials(self.records.values())
        if self.on_write is not None:
            self.on_write()


def _clock(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _what(record: TrialResult) -> str:
    return f"{record.method} ({record.quantization})"

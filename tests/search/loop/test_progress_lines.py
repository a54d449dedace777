"""The line printed as each trial ends says how far the search is: elapsed, about how long is left, best so far."""

from __future__ import annotations

import io
import sys

from peft_search.search.loop.table import TrialTable, _clock
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import get_metric
from peft_search.search.results.records import TrialResult


def test_each_finished_trial_says_elapsed_time_left_and_the_best_so_far(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("peft_search.search.loop.table.time.monotonic", lambda: now[0])
    table = TrialTable(ResultsDir(tmp_path), 4, ["accuracy", "trainable_params"], echo=False)
    table.setup()  # the search starts at t=100
    now[0] = 160.0
    assert table._progress() == " | 1m00s elapsed"  # nothing finished yet: no estimate, no best
    table.records = {
        "a": TrialResult(
            "a", "complete", "lora", "int8", metrics={"accuracy": 0.8867, "trainable_params": 1e5}
        ),
        "b": TrialResult("b", "complete", "ia3", "none", metrics={"accuracy": 0.8, "trainable_params": 1e3}),
        "c": TrialResult("c", "failed", "vera", "nf4"),
    }
    best = get_metric("accuracy").format(0.8867)
    # 3 of 4 trials ended in 60 s: about 20 s left; the best by the first objective, failed trials aside.
    assert table._progress() == f" | 1m00s elapsed, about 20s left; best accuracy {best} (lora, int8)"
    table.records["d"] = TrialResult("d", "running", "lora", "none")
    assert "about 20s left" in table._progress()  # a running trial is not done
    table.records["d"] = TrialResult("d", "complete", "lora", "none", metrics={"accuracy": 0.9})
    assert "left" not in table._progress() and "(lora, none)" in table._progress()


def test_a_resumed_search_estimates_from_its_own_trials(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr("peft_search.search.loop.table.time.monotonic", lambda: now[0])
    first = TrialTable(ResultsDir(tmp_path), 4, ["accuracy"], echo=False)
    first.records = {t: TrialResult(t, "complete", "lora", "none", metrics={"accuracy": 0.5}) for t in "ab"}
    first.write()
    resumed = TrialTable(ResultsDir(tmp_path), 4, ["accuracy"], echo=False)
    resumed.setup()  # two trials finished before the driver died: they say nothing about this run's pace
    resumed.records["c"] = TrialResult("c", "complete", "lora", "none", metrics={"accuracy": 0.6})
    now[0] = 30.0
    assert resumed._progress().startswith(" | 30s elapsed, about 30s left;")


def test_clock():
    assert [_clock(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


class _Trial:
    """What the table reads of a Tune trial."""

    def __init__(self, trial_id, status, last_result=None):
        self.trial_id, self.status, self.last_result = trial_id, status, last_result
        self.config = {"method": "lora", "quantization": "none", "peft_config": {}, "learning_rate": 1e-3}


def test_a_trials_end_is_written_as_its_final_result_arrives_and_filled_in_on_resume(tmp_path):
    results = ResultsDir(tmp_path)
    table = TrialTable(results, 3, ["accuracy"], echo=False)
    table.setup()
    done = {
        "trial_status": "complete",
        "accuracy": 0.75,
        "heldout_rows": {"label": [1], "prediction": [1], "correct": [1]},
    }
    table.on_trial_start(0, [], _Trial("a", "RUNNING"))
    table.on_trial_result(0, [], _Trial("a", "RUNNING"), {"trial_status": "running", "accuracy": 0.5})
    assert not results.trials_path.exists()  # a start and a rung's result wait for the step's end
    # The final result is on disk, predictions too, before Tune tells the searcher (and the study) the trial
    # ended: a driver killed in between leaves no outcome that the study holds and the table lacks.
    table.on_trial_result(0, [], _Trial("a", "RUNNING"), done)
    assert results.read_trials().set_index("trial_id").loc["a", "status"] == "complete"
    assert results.correct_by_trial() == {"a": [True]}
    # A rung's result the scheduler stops the trial at (Tune marks it done) ends it there too.
    table.on_trial_result(
        0, [], _Trial("s", "RUNNING"), {"trial_status": "running", "rung_step": 2, "done": True}
    )
    stopped = results.read_trials().set_index("trial_id").loc["s"]
    assert stopped["status"] == "stopped_early" and stopped["stopped_at_step"] == 2
    recorded = table.records["a"]
    table.on_trial_complete(0, [], _Trial("a", "TERMINATED", done))  # recorded already: left as it is
    assert table.records["a"] is recorded and table._done() == 2
    # Killed after Tune saved a finished trial "b" but before the table wrote it: the resumed search's first
    # step records it from the result Tune restored; a trial Tune will run again stays as it is.
    resumed = TrialTable(results, 3, ["accuracy"], echo=False)
    resumed.setup()
    restored = [
        _Trial("a", "TERMINATED", done),
        _Trial("b", "TERMINATED", {**done, "accuracy": 0.5}),
        _Trial("c", "PENDING"),
    ]
    resumed.on_step_begin(0, restored)
    resumed.on_step_end(0, restored)
    after = results.read_trials().set_index("trial_id")
    assert after.loc["b", "status"] == "complete" and after.loc["b", "accuracy"] == 0.5
    assert "c" not in after.index and set(results.correct_by_trial()) == {"a", "b"}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


DONE = {
    "trial_status": "complete",
    "accuracy": 0.75,
    "heldout_rows": {"label": [1], "prediction": [1], "correct": [1]},
}


def test_a_terminal_gets_a_progress_bar_under_the_lines(tmp_path, monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    table = TrialTable(ResultsDir(tmp_path), 3, ["accuracy"], echo=True)
    table.setup()
    table.on_trial_start(0, [], _Trial("a", "RUNNING"))
    table.on_trial_complete(0, [], _Trial("a", "TERMINATED", DONE))
    table.on_step_end(0, [])
    bar = terminal.getvalue()
    assert "[peft-search] 1/3 trials |" in bar and "elapsed" in bar and "left; best accuracy" in bar
    lines = capsys.readouterr().out.splitlines()  # the lines go to stdout, above the bar
    assert lines[0].startswith("[peft-search] trial a started") and lines[1].startswith(
        "[peft-search] trial 1/3 complete"
    )
    table.on_experiment_end([])
    assert table.bar is None or table.bar.bar is None  # closed


def test_no_terminal_no_bar(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe, a log file, a Ray job
    table = TrialTable(ResultsDir(tmp_path), 3, ["accuracy"], echo=True)
    table.setup()
    table.on_trial_complete(0, [], _Trial("a", "TERMINATED", DONE))
    assert sys.stderr.getvalue() == "" and "trial 1/3 complete" in capsys.readouterr().out

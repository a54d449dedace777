"""Trial faults inside real Ray workers: an exception, an out-of-memory error and a worker process that dies are
each recorded as a failed trial with its error, and the search goes on."""

from __future__ import annotations

import pandas as pd
import pytest

from peft_search.search.worker.faults import FAULTS_ENV, faults_from_env

LORA = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["query", "value"]}


def test_fault_spec_is_parsed_strictly():
    assert faults_from_env({FAULTS_ENV: "a=raise, b=oom,c=exit"}) == {"a": "raise", "b": "oom", "c": "exit"}
    assert faults_from_env({}) == {}
    with pytest.raises(ValueError, match="NAME=KIND"):
        faults_from_env({FAULTS_ENV: "a=__import__('os')"})


@pytest.mark.slow
def test_each_fault_is_a_failed_trial_and_the_search_goes_on(
    ray_local, tiny_bert, classification_csv, tmp_path, monkeypatch
):
    from peft_search.search.loop.driver import run_search
    from tests.helpers import tiny_config

    names = ["raises", "oom", "exits", "healthy"]
    monkeypatch.setenv(FAULTS_ENV, "raises=raise,oom=oom,exits=exit")
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space={"methods": ["lora"], "candidates": [{"name": n, "peft_config": LORA} for n in names]},
        search={"num_trials": 4, "max_concurrent": 2},
        training={"max_steps": 2},
        resources={"cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    trials = pd.read_parquet(search_dir / "trials.parquet").set_index("candidate")
    assert list(trials.loc[names, "status"]) == ["failed", "failed", "failed", "complete"]
    assert "injected fault" in trials.loc["raises", "error"]
    assert "can't allocate memory" in trials.loc["oom", "error"]
    # The worker process is gone: Ray reports the actor's death, not a Python exception from inside it.
    assert trials.loc["exits", "error"].startswith("ActorDiedError")
    assert trials.loc["healthy", "accuracy"] >= 0
    assert (search_dir / "report.html").exists()


@pytest.mark.slow
def test_html_in_a_failed_trials_error_reaches_the_report_escaped(
    ray_local, tiny_bert, classification_csv, tmp_path
):
    """A real trial error that quotes a config value: an HTML payload in it is text in the report, never markup."""
    from peft_search.reports.html import write_report
    from peft_search.search.loop.driver import run_search
    from tests.helpers import tiny_config

    payload = "<img src=x onerror=window.__xss=1>"
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space={"methods": ["lora"], "candidates": [{"name": "evil", "peft_config": LORA}]},
        search={"num_trials": 1},
        # The learning-rate scheduler is built in the trial: an unknown keyword fails it, quoting the keyword.
        training={"max_steps": 1, "lr_scheduler_kwargs": {payload: 1}},
    )
    search_dir = run_search(cfg, echo=False)
    (trial,) = pd.read_parquet(search_dir / "trials.parquet").itertuples()
    assert trial.status == "failed" and payload in trial.error
    page = write_report(search_dir).read_text()
    assert payload not in page
    assert "&lt;img src=x onerror=window.__xss=1&gt;" in page

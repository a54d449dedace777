"""Mid-trial checkpoints (``training.checkpoint_every``): a trial whose worker dies at step 20 of 30 is restarted by
Tune, continues from its step-20 checkpoint (the Trainer's own, kept by Tune), and ends with the adapter an
uninterrupted run trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_search.search.errors import ConfigError
from peft_search.search.loop.driver import run_search
from peft_search.search.results.layout import ResultsDir
from peft_search.search.settings.loading import parse_config
from peft_search.search.worker.faults import FAULTS_ENV
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow

CANDIDATE = {
    "name": "lora-qv",
    "learning_rate": 0.01,
    "peft_config": {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": 4,
        "target_modules": ["query", "value"],
    },
}


def _search(model, data, results: Path, name: str):
    cfg = tiny_config(
        model,
        data,
        name=name,
        results_dir=str(results),
        space={"methods": [], "candidates": [CANDIDATE]},
        search={"num_trials": 1, "seed": 0, "max_concurrent": 1},
        training={"max_steps": 30, "batch_size": 4, "checkpoint_every": 10},
        resources={"max_failures": 1},
    )
    search_dir = run_search(cfg, echo=False)
    trials = ResultsDir(search_dir).read_trials()  # its adapter_path where the search is
    assert len(trials) == 1 and trials["status"].iloc[0] == "complete", trials[["status", "error"]]
    (result,) = search_dir.glob("tune/trial-*/result.json")
    last = json.loads(result.read_text().splitlines()[-1])
    return search_dir, trials.iloc[0], last


def test_a_worker_killed_at_step_20_resumes_there_and_trains_the_same_adapter(
    ray_local, tiny_bert, classification_csv, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    _, whole, whole_last = _search(tiny_bert, classification_csv, tmp_path, "whole")
    assert whole_last["resumed_from_step"] == 0
    monkeypatch.setenv(FAULTS_ENV, "lora-qv=exit@20")  # the worker process dies after step 20, once
    search_dir, resumed, last = _search(tiny_bert, classification_csv, tmp_path, "killed")
    (state,) = (search_dir / "tune").glob("experiment_state-*.json")
    (pair,) = json.loads(state.read_text())["trial_data"]
    assert json.loads(pair[1])["num_failures"] == 1  # Tune restarted it once
    assert last["resumed_from_step"] == 20
    assert json.loads(resumed["learning_curve"])["step"] == list(range(1, 31))  # the whole curve, both runs
    a = load_file(str(Path(whole["adapter_path"]) / "adapter_model.safetensors"))
    b = load_file(str(Path(resumed["adapter_path"]) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-6, key
    assert resumed["accuracy"] == whole["accuracy"]


@pytest.mark.parametrize(
    "training,resources,message",
    [
        ({"checkpoint_every": 0}, {}, "training.checkpoint_every: write a number of steps"),
        ({"checkpoint_every": "soon"}, {}, "training.checkpoint_every: write a number of steps such as 200"),
        (
            {"checkpoint_every": 10},
            {"num_workers": 2},
            "training.checkpoint_every: mid-trial checkpoints are kept",
        ),
        ({"save_steps": 10}, {}, "training.save_steps: set by the search; each trial saves its adapter once"),
    ],
)
def test_bad_checkpoint_settings_get_one_line(training, resources, message):
    raw = {
        "name": "t",
        "model": {"name_or_path": "m"},
        "dataset": {"source": "x.csv"},
        "training": training,
        "resources": resources,
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert str(err.value).startswith(message), str(err.value)


def test_minutes_are_accepted():
    raw = {"name": "t", "model": {"name_or_path": "m"}, "dataset": {"source": "x.csv"}}
    cfg = parse_config({**raw, "training": {"checkpoint_every": "1.5min"}})
    assert cfg.training.checkpoint_seconds() == 90.0


def test_auto_checkpoints_every_15_minutes_and_off_turns_them_off():
    """The default keeps none in a short trial and one every 15 minutes in a long one."""
    raw = {"name": "t", "model": {"name_or_path": "m"}, "dataset": {"source": "x.csv"}}
    assert parse_config(raw).training.checkpoint_seconds() == 15 * 60
    off = parse_config({**raw, "training": {"checkpoint_every": "off"}}).training
    assert off.checkpoint_every is None and off.checkpoint_seconds() is None
    ddp = parse_config({**raw, "resources": {"num_workers": 2}})  # auto: no error, one-worker trials only
    assert ddp.training.checkpoint_every == "auto"

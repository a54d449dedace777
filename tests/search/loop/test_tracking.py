"""Experiment tracking through Ray Tune's logger callbacks: a tiny search logs to an MLflow store under the results
directory, read back with MLflow's own API; no credential from the environment lands anywhere."""

from __future__ import annotations

import os

import pytest

from peft_search.search.errors import ConfigError
from peft_search.search.loop.driver import run_search
from peft_search.search.settings.loading import parse_config
from tests.helpers import tiny_config

SECRET = "s3cr3t-mlflow-token-value"


@pytest.mark.slow
def test_a_search_logs_every_trial_to_mlflow(ray_local, tiny_bert, classification_csv, tmp_path, monkeypatch):
    # CI installs MLflow (the test extra): there a missing package fails the test instead of skipping it.
    mlflow = __import__("mlflow") if os.environ.get("CI") else pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space={"methods": ["lora", "ia3"]},
        search={"num_trials": 2, "seed": 0, "max_concurrent": 1},
        training={"max_steps": 4, "lr_scheduler_type": ["linear", "cosine"]},
        tracking={"mlflow": {"tags": {"team": "adapters"}}, "tensorboard": True},
    )
    search_dir = run_search(cfg, echo=False)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{search_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    import pandas as pd

    trials = pd.read_parquet(search_dir / "trials.parquet").set_index("trial_id")
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["team"] == "adapters"
        trial_id = run.data.tags["trial_name"].removeprefix("trial-")
        row = trials.loc[trial_id]
        assert run.data.metrics["accuracy"] == pytest.approx(row["accuracy"])
        # The searched TrainingArguments field is a parameter of the run, as the table records it.
        assert run.data.params["training/lr_scheduler_type"] in ("linear", "cosine")
        assert run.data.params["method"] == row["method"]
        # The learning curve, step by step, as in the report.
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [1, 2, 3, 4]
    # TensorBoard event files beside each trial's Tune files, with the learning curve's scalars.
    events = list(search_dir.glob("tune/trial-*/events.out.tfevents.*"))
    assert sum(b"curve/train_loss" in e.read_bytes() for e in events) == 2
    # No credential from the environment in any file the search wrote.
    for path in search_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    "tracking,message",
    [
        (
            {"mlflow": {"tracking_uri": "http://user:pw@mlflow:5000"}},
            "tracking.mlflow.tracking_uri: credentials",
        ),
        ({"mlflow": {"token": "x"}}, "tracking.mlflow.token: unknown key"),
        ({"wandb": {"mode": "sometimes"}}, "tracking.wandb.mode:"),
    ],
)
def test_bad_tracking_gets_one_line(tracking, message):
    raw = {"name": "t", "model": {"name_or_path": "m"}, "dataset": {"source": "x.csv"}, "tracking": tracking}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert str(err.value).startswith(message), str(err.value)

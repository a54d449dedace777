"""The Python API (`peft_search`): a real search on local Ray from Python, and the README's example as written."""

from __future__ import annotations

import os
import re

import pytest

import peft_search
from tests import ROOT
from tests.helpers import tiny_config

README = ROOT / "docs" / "python-api.md"

pytestmark = pytest.mark.slow


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert peft_search.__version__ == version("peft-search")


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(peft_search.ConfigError, match=r"^training.max_steps: Input should be greater"):
        peft_search.run(overrides={"training.max_steps": 0, "results_dir": str(tmp_path)})
    with pytest.raises(peft_search.ConfigError, match="space.methods: unknown method 'lorra'"):
        peft_search.plan(
            {
                "name": "x",
                "model": {"name_or_path": "m"},
                "dataset": {"source": "d.csv"},
                "space": {"methods": ["lorra"]},
            }
        )
    with pytest.raises(peft_search.ConfigError, match="holds no peft-search search"):
        peft_search.load(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_load_front_best_report_and_study(ray_local, tiny_bert, classification_csv, tmp_path):
    raw = tiny_config(tiny_bert, classification_csv).model_dump(mode="json")
    overrides = {
        "results_dir": str(tmp_path),
        "name": "api",
        "search.num_trials": 3,
        "space.methods": ["ia3", "bitfit"],
        "resources.cpus_per_worker": 1,
    }
    results = peft_search.run(raw, overrides=overrides, echo=False)
    assert results.path == tmp_path.resolve() / "api"
    trials = results.trials
    assert len(trials) == 3 and set(trials["status"]) == {"complete"}
    front = results.front()
    assert 1 <= len(front) <= 3 and set(front["trial_id"]) <= set(trials["trial_id"])
    choice = results.best(max_params=1e9, max_memory="64GiB")
    assert choice.trial is not None and choice.trial["trial_id"] in set(trials["trial_id"])
    assert results.best(max_params=1).trial is None  # nothing fits: no pick, and the reason says so
    assert "no complete trial meets" in results.best(max_params=1).reason
    assert results.report().name == "report.html" and (results.path / "report.html").is_file()
    study = results.study()
    assert study.metric_names == ["accuracy", "trainable_params", "peak_memory_bytes"]
    assert len(study.trials) == 3
    again = peft_search.load(results.path)
    assert again.trials["trial_id"].tolist() == trials["trial_id"].tolist()
    plan = peft_search.plan(raw, overrides=overrides, samples=2)
    assert {"trainable_params", "est_peak_memory_bytes"} <= set(plan.columns) and len(plan) >= 1


def test_the_readme_example_runs(ray_local, tmp_path, monkeypatch):
    block = re.search(r"# Python API\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md (Python API)", "exec"), namespace)  # noqa: S102 - the README's own example
    assert len(namespace["trials"]) == 2 and namespace["choice"].trial is not None
    assert os.path.isdir(tmp_path / "results" / "api-example")
    assert namespace["same"].path == namespace["results"].path
    assert namespace["score"].reproduced is True and (tmp_path / "adapter" / "peft_search.json").is_file()

"""A real search optimising held-out loss and training time: Optuna, the trials table, `best` and the report all
follow those two objectives, not the defaults."""

from __future__ import annotations

import json

import optuna
import pytest

from peft_search.search.cli import main
from peft_search.search.results.layout import ResultsDir

# One worker runs the module (CI: --dist loadgroup), so its search fixture runs once, not on each worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("objectives")]

LORA = {"peft_type": "LORA", "task_type": "SEQ_CLS", "target_modules": ["query", "value"]}


@pytest.fixture(scope="module")
def loss_and_time(ray_local, tiny_bert, classification_csv, tmp_path_factory):
    from peft_search.search.loop.driver import run_search
    from tests.helpers import tiny_config

    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path_factory.mktemp("objectives")),
        space={
            "methods": [],
            "candidates": [
                {"name": f"lora-r{r}", "peft_config": {**LORA, "r": r}, "learning_rate": 1e-2}
                for r in (2, 4, 8)
            ],
        },
        objectives=[{"metric": "eval_loss"}, {"metric": "train_time_s", "mode": "min"}],
        search={"num_trials": 3, "max_concurrent": 1},
        training={"max_steps": 2},
        resources={"cpus_per_worker": 1},
    )
    return cfg, run_search(cfg, echo=False)


def test_the_study_optimises_the_configured_objectives(loss_and_time):
    cfg, search_dir = loss_and_time
    results = ResultsDir(search_dir)
    assert [(o.metric, o.mode) for o in results.objectives()] == [
        ("eval_loss", "min"),
        ("train_time_s", "min"),
    ]
    study = optuna.load_study(study_name=cfg.name, storage=results.optuna_url)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["eval_loss", "train_time_s"]
    trials = results.read_trials().set_index("optuna_trial")
    for t in study.trials:
        assert t.values == pytest.approx(
            [trials.loc[t.number, "eval_loss"], trials.loc[t.number, "train_time_s"]]
        )


def test_the_report_draws_loss_against_time(loss_and_time):
    _, search_dir = loss_and_time
    page = (search_dir / "report.html").read_text()
    assert 'id="pareto-train_time_s"' in page and 'id="three-objectives"' not in page
    assert 'id="pareto-trainable_params"' not in page and 'id="pareto-peak_memory_bytes"' not in page
    assert '"title":{"text":"training time (s)"}' in page and '"title":{"text":"held-out loss"}' in page
    assert 'id="max-eval_loss"' in page and 'id="min-accuracy"' not in page


def test_best_ranks_by_loss_first(loss_and_time, capsys):
    _, search_dir = loss_and_time
    assert main(["best", str(search_dir), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    trials = ResultsDir(search_dir).read_trials()
    assert out["pick"]["trial_id"] == trials.loc[trials["eval_loss"].idxmin(), "trial_id"]
    assert [o["metric"] for o in out["objectives"]] == ["eval_loss", "train_time_s"]

"""AdapterHub's bottleneck adapters and Compacter (the ``adapters`` extra): in the space, planned exactly, trained by
the same worker, saved as AdapterHub loads them. Without the library: one line that says how to install it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from peft_search.spaces import install_hint, registered_methods
from peft_search.spaces.registry import library_installed

METHODS = ["seq_bn", "double_seq_bn", "par_bn", "compacter"]
HAS_ADAPTERS = library_installed("adapters")


@pytest.mark.skipif(HAS_ADAPTERS, reason="the adapters library is installed here")
def test_without_the_library_naming_one_says_how_to_install_it(tiny_bert, classification_csv, tmp_path):
    assert not set(METHODS) & set(registered_methods())
    assert install_hint("seq_bn") == (
        "method 'seq_bn' needs the 'adapters' library, not installed here; pip install \"peft-search[adapters]\""
    )
    config = tmp_path / "search.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "hub",
                "model": {"name_or_path": tiny_bert},
                "dataset": {"source": classification_csv},
                "space": {"methods": ["lora", "seq_bn"]},
                "results_dir": str(tmp_path / "results"),
            }
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "peft_search", "plan", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'pip install "peft-search[adapters]"' in lines[0] and "seq_bn" in lines[0]
    assert not (tmp_path / "results").exists()


needs_adapters = pytest.mark.skipif(not HAS_ADAPTERS, reason="needs the adapters extra")


@pytest.fixture(scope="module")
def seq_cls(tiny_bert, classification_csv, tmp_path_factory):
    from tests.helpers import prepared

    return prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path_factory.mktemp("hub"))


def _library_model(model_path: str, num_labels: int, peft_config: dict):
    """The model as AdapterHub's own API builds it, with the head training beside the adapter."""
    import adapters
    from transformers import AutoModelForSequenceClassification

    from peft_search.search.inputs.adapterhub import adapterhub_config

    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=num_labels, ignore_mismatched_sizes=True
    )
    adapters.init(model)
    model.add_adapter("mine", config=adapterhub_config(peft_config))
    model.train_adapter("mine")
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    return model


@needs_adapters
@pytest.mark.adapters
@pytest.mark.parametrize("method", METHODS)
def test_each_method_plans_exactly_trains_and_reloads_as_adapterhub_loads_it(seq_cls, method):
    from peft_search.search.inputs.modeling import meta_model
    from peft_search.search.plan.planning import plan_candidate
    from peft_search.search.worker.evaluation import evaluate
    from peft_search.search.worker.training import run_trial
    from tests.helpers import sample_trial

    prep, settings = seq_cls
    assert method in registered_methods() and registered_methods()[method].family == "adapters"
    # The tiny model's hidden size is 32: a bottleneck of 32 / 8 = 4, which Compacter's phm_dim 4 divides.
    pinned = {"compacter.reduction_factor": 8, "compacter.phm_dim": 4} if method == "compacter" else {}
    trial = sample_trial(prep, method, **{f"{method}.layers": "top-half", **pinned})
    assert trial.peft_config["leave_out"] == [0]  # the tiny model's 2 blocks: the top half is block 1
    mine = _library_model(settings.model_path, prep.data.num_labels, trial.peft_config)
    expected = sum(p.numel() for p in mine.parameters() if p.requires_grad)

    base = meta_model(settings.model_path, settings.task, prep.data.num_labels)
    plan = plan_candidate(
        base, trial.peft_config, quantization="none", batch_size=4, seq_len=24, device="cpu"
    )
    assert plan.trainable_params == expected
    assert plan.total_params == sum(p.numel() for p in mine.parameters())

    metrics, adapter_dir = run_trial(trial, settings, prep.data, device=torch.device("cpu"))
    try:
        assert metrics["trial_status"] == "complete" and metrics["trainable_params"] == expected
        assert metrics["adapter_bytes"] > 0
        # Reloaded with AdapterHub's own load_adapter (and the head beside it), it scores what the trial recorded.
        import adapters
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(1)  # another head init: only the head load_adapter restores scores the same
        model = AutoModelForSequenceClassification.from_pretrained(
            settings.model_path, num_labels=prep.data.num_labels, ignore_mismatched_sizes=True
        )
        adapters.init(model)
        name = model.load_adapter(adapter_dir.name, use_safetensors=True)
        model.set_active_adapters(name)
        again = evaluate(model, prep.data, settings.task, 8, torch.device("cpu"))
        assert again.accuracy == metrics["accuracy"]
        assert again.eval_loss == pytest.approx(metrics["eval_loss"], abs=1e-5)
    finally:
        adapter_dir.cleanup()


@needs_adapters
@pytest.mark.adapters
def test_a_shape_the_library_refuses_is_an_infeasible_trial(seq_cls):
    from peft_search.search.errors import InfeasibleTrialError
    from peft_search.search.inputs.modeling import inject_adapter, meta_model
    from tests.helpers import sample_trial

    prep, settings = seq_cls
    # A bottleneck of 32 / 16 = 2 rows cannot be split into phm_dim 4 Kronecker factors: AdapterHub asserts.
    trial = sample_trial(prep, "compacter", **{"compacter.reduction_factor": 16, "compacter.phm_dim": 4})
    with pytest.raises(InfeasibleTrialError, match="phm_dim"):
        inject_adapter(
            meta_model(settings.model_path, settings.task, prep.data.num_labels), trial.peft_config
        )


@needs_adapters
@pytest.mark.adapters
@pytest.mark.slow
def test_a_search_of_every_adapterhub_method_beside_lora_exports_and_rescores(
    ray_local, tiny_bert, classification_csv, tmp_path
):
    """Each of the four (and LoRA) as an explicit candidate of one search on local Ray: all complete, the report
    groups the four as the family ``adapters``, and an exported one re-scores what it recorded."""
    import pandas as pd

    from peft_search.reports.data import load_report_data
    from peft_search.search.loop.driver import run_search
    from peft_search.search.shipping.evaluate import evaluate_export
    from peft_search.search.shipping.export import export_trial
    from tests.helpers import tiny_config

    shapes = {"reduction_factor": 8, "non_linearity": "relu"}
    candidates = [
        {
            "name": m,
            "learning_rate": 0.01,
            "peft_config": {"peft_type": m.upper(), "task_type": "SEQ_CLS", **shapes},
        }
        for m in METHODS
    ]
    candidates[-1]["peft_config"]["phm_dim"] = 4
    candidates.append(
        {
            "name": "lora",
            "learning_rate": 0.01,
            "peft_config": {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["query"]},
        }
    )
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space={"methods": ["lora", *METHODS], "candidates": candidates},
        search={"num_trials": len(candidates), "seed": 0, "max_concurrent": 2},
        training={"max_steps": 3},
        resources={"cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    trials = pd.read_parquet(f"{search_dir}/trials.parquet")
    assert sorted(trials["method"]) == sorted(["lora", *METHODS]), trials[["method", "status", "error"]]
    assert (trials["status"] == "complete").all(), trials[["method", "status", "error"]]
    summary = load_report_data(search_dir).methods.set_index("method")
    assert {summary.loc[m, "family"] for m in METHODS} == {"adapters"} and summary.loc[
        "lora", "family"
    ] == "lora"

    row = trials[trials["method"] == "seq_bn"].iloc[0].to_dict()
    export = export_trial(search_dir, row, tmp_path / "export")
    assert (export / "adapter.safetensors").is_file() and str(tmp_path) not in (
        export / "adapter_config.json"
    ).read_text()
    score = evaluate_export(export)
    assert score.evaluation.accuracy == row["accuracy"]


@needs_adapters
@pytest.mark.adapters
def test_an_8_bit_base_trains_and_a_4_bit_candidate_is_refused_in_one_line(seq_cls):
    from peft_search.search.errors import ConfigError
    from peft_search.search.inputs.candidates import check_candidates
    from peft_search.search.settings.space_config import CandidateSpec
    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.training import run_trial

    prep, settings = seq_cls
    assert registered_methods()["seq_bn"].quantization == frozenset({"none", "int8"})
    config = {"peft_type": "SEQ_BN", "task_type": "SEQ_CLS", "reduction_factor": 8, "non_linearity": "relu"}
    metrics, adapter_dir = run_trial(
        TrialConfig("seq_bn", "int8", config, 0.01), settings, prep.data, device=torch.device("cpu")
    )
    adapter_dir.cleanup()
    assert metrics["trial_status"] == "complete" and metrics["trainable_params"] > 0
    with pytest.raises(
        ConfigError,
        match=r"^space\.candidates\[0\]\.quantization: seq_bn trains on none or int8 bases only \(.+\); use int8$",
    ):
        check_candidates(
            [CandidateSpec(name="q", quantization="nf4", peft_config=config)],
            ["bert"],
            2,
            "sequence-classification",
        )


@needs_adapters
@pytest.mark.adapters
@pytest.mark.parametrize("method", ["seq_bn", "par_bn"])
def test_a_causal_lm_trains_with_one(tiny_llama, qa_jsonl, tmp_path, method):
    from peft_search.search.inputs.modeling import meta_model
    from peft_search.search.plan.planning import plan_candidate
    from peft_search.search.worker.training import run_trial
    from tests.helpers import prepared, sample_trial

    prep, settings = prepared(tiny_llama, qa_jsonl, "causal-lm", tmp_path)
    trial = sample_trial(prep, method, **{f"{method}.reduction_factor": 8})
    assert trial.peft_config["task_type"] == "CAUSAL_LM"
    metrics, adapter_dir = run_trial(trial, settings, prep.data, device=torch.device("cpu"))
    adapter_dir.cleanup()
    assert metrics["trial_status"] == "complete" and 0.0 <= metrics["accuracy"] <= 1.0
    plan = plan_candidate(
        meta_model(settings.model_path, settings.task),
        trial.peft_config,
        quantization="none",
        batch_size=4,
        seq_len=24,
        device="cpu",
    )
    assert plan.trainable_params == metrics["trainable_params"]


@needs_adapters
@pytest.mark.adapters
def test_rungs_and_a_budget_work_as_for_peft(tiny_bert, classification_csv, tmp_path):
    """Early stopping's rung evaluations reach the search, and a memory budget rules a trial out before it loads."""
    from peft_search.search.errors import InfeasibleTrialError
    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.training import run_trial
    from tests.helpers import tiny_config

    config = {"peft_type": "SEQ_BN", "task_type": "SEQ_CLS", "reduction_factor": 8, "non_linearity": "relu"}
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        training={"max_steps": 6, "batch_size": 4},
        search={"early_stopping": {"rule": "asha", "grace_steps": 2, "reduction_factor": 2, "eval_size": 4}},
    )
    prep = prepare(cfg)
    reported: list[dict] = []
    trial = TrialConfig("seq_bn", "none", config, 0.01)
    metrics, adapter = run_trial(
        trial, prep.settings, prep.data, device=torch.device("cpu"), on_rung=reported.append
    )
    adapter.cleanup()
    assert [r["rung_step"] for r in reported] == [2, 4] and all(r["eval_rows"] == 4 for r in reported)
    assert metrics["learning_curve"]["eval_step"] == [2, 4]
    tight = prep.settings.with_config(budget={"max_memory": 10**6})
    with pytest.raises(InfeasibleTrialError, match="budget|memory"):
        run_trial(trial, tight, prep.data, device=torch.device("cpu"))

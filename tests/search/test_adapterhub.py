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
    from safetensors.torch import load_file

    from peft_search.search.inputs.adapterhub import HEAD_FILE
    from peft_search.search.inputs.modeling import meta_model
    from peft_search.search.plan.planning import plan_candidate
    from peft_search.search.worker.evaluation import evaluate
    from peft_search.search.worker.training import run_trial
    from tests.helpers import sample_trial

    prep, settings = seq_cls
    assert method in registered_methods() and registered_methods()[method].family == "adapters"
    trial = sample_trial(prep, method, **{f"{method}.layers": "top-half"})
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

        torch.manual_seed(1)  # a different head init: only the saved head may make it score the same
        model = AutoModelForSequenceClassification.from_pretrained(
            settings.model_path, num_labels=prep.data.num_labels, ignore_mismatched_sizes=True
        )
        adapters.init(model)
        name = model.load_adapter(adapter_dir.name)
        model.set_active_adapters(name)
        head = load_file(f"{adapter_dir.name}/{HEAD_FILE}")
        model.load_state_dict(head, strict=False)
        again = evaluate(model, prep.data, settings.task, 8, torch.device("cpu"))
        assert again.accuracy == metrics["accuracy"]
        assert again.eval_loss == pytest.approx(metrics["eval_loss"], abs=1e-5)
    finally:
        adapter_dir.cleanup()

"""GPU trials: 4-bit QLoRA on CUDA, fractional GPUs shared by concurrent trials, one device per trial, memory freed.

The GPU tests carry the ``gpu`` marker and are skipped without CUDA (CI has none). How many trials share a GPU is
plain arithmetic, tested here on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from peft_search.cluster import plan_concurrency
from peft_search.search.errors import ConfigError
from tests.helpers import prepared, sample_trial, tiny_config

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

QLORA = {
    "name": "qlora",
    "quantization": "nf4",
    "learning_rate": 0.01,
    "peft_config": {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": 4,
        "target_modules": ["query", "value"],
    },
}


@pytest.mark.parametrize(
    ("resources", "shape", "expected"),
    [
        ({"CPU": 16, "GPU": 1}, (1, 1, 0.5), 2),
        ({"CPU": 16, "GPU": 1}, (1, 1, 0.25), 4),
        ({"CPU": 16, "GPU": 1}, (1, 1, 0.1), 10),  # 1 // 0.1 == 9.0 in floats; Ray fits 10
        ({"CPU": 16, "GPU": 2}, (1, 1, 0.3), 6),  # 6 x 0.3 = 1.8 of 2; a 7th would not fit
        ({"CPU": 16, "GPU": 4}, (2, 1, 0.5), 4),  # 2 workers x 0.5 GPU per trial
        ({"CPU": 3, "GPU": 1}, (1, 1, 0.25), 3),  # the CPUs bind first
        ({"CPU": 1.5}, (1, 0.3, 0), 5),  # fractional CPUs too (1.5 // 0.3 == 4.0 in floats)
        ({"CPU": 16, "GPU": 1}, (1, 1, 1), 1),
    ],
)
def test_plan_concurrency_counts_fractions_as_ray_does(resources, shape, expected):
    num_workers, cpus, gpus = shape
    got = plan_concurrency(resources, num_workers=num_workers, cpus_per_worker=cpus, gpus_per_worker=gpus)
    assert got == expected


def test_gpus_per_worker_takes_fractions_or_whole_gpus():
    for share in (0.5, 0.25, 0.1, 1, 2):
        assert tiny_config("m", "d", resources={"gpus_per_worker": share}).resources.gpus_per_worker == share
    with pytest.raises(ConfigError, match=r"resources\.gpus_per_worker: .*not 1\.5"):
        tiny_config("m", "d", resources={"gpus_per_worker": 1.5})


@pytest.fixture(scope="module")
def small_bert(tiny_bert, tmp_path_factory):
    """Tiny BERT's tokenizer with 2 layers of width 256 (~2M parameters): big enough that a leak would show."""
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("small-bert")
    for name in Path(tiny_bert).iterdir():
        if "token" in name.name or name.name == "special_tokens_map.json":
            shutil.copy(name, path)
    config = BertConfig.from_pretrained(tiny_bert)
    config.update({"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


def _search(model: str, data: str, results: Path, **overrides) -> tuple[Path, pd.DataFrame]:
    from peft_search.search.loop.driver import run_search

    cfg = tiny_config(model, data, results_dir=str(results), **overrides)
    search_dir = run_search(cfg, echo=False)
    return search_dir, pd.read_parquet(search_dir / "trials.parquet")


@gpu
@needs_cuda
@pytest.mark.slow
def test_qlora_trial_on_cuda_reports_gpu_peak(ray_local, small_bert, classification_csv, tmp_path):
    _, trials = _search(
        small_bert,
        classification_csv,
        tmp_path,
        space={"methods": [], "candidates": [QLORA]},
        search={"num_trials": 1},
        training={"max_steps": 5},
        resources={"cpus_per_worker": 1, "gpus_per_worker": 1},
    )
    trial = trials.iloc[0]
    assert trial["status"] == "complete", trial["error"]
    print(
        f"\nqlora nf4 on {torch.cuda.get_device_name(0)}: peak {trial['peak_memory_bytes']:,} B "
        f"(estimated {trial['est_peak_memory_bytes']:,} B), {trial['tokens_per_s']:,.0f} tokens/s"
    )
    assert trial["quantization"] == "nf4" and trial["device"] == "cuda"
    assert trial["peak_memory_kind"] == "gpu_allocated"
    # The allocator's peak over the trial: at least the 4-bit weights and the adapter, far below a whole GPU.
    assert 0 < trial["peak_memory_bytes"] < 2 * 1024**3


def _span(result_json: Path) -> tuple[float, float]:
    """When a trial ran, from what Tune recorded with its result (end time and seconds since the trial started)."""
    last = json.loads(result_json.read_text().splitlines()[-1])
    return last["timestamp"] - last["time_total_s"], last["timestamp"]


@gpu
@needs_cuda
@pytest.mark.slow
def test_two_trials_share_one_gpu_at_once(ray_local, small_bert, classification_csv, tmp_path):
    """``gpus_per_worker: 0.5`` on one GPU: the plan says 2 trials at once, and two do run at the same time."""
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("Ray sees no GPU")
    search_dir, trials = _search(
        small_bert,
        classification_csv,
        tmp_path,
        space={"methods": [], "candidates": [QLORA, {**QLORA, "name": "qlora-2", "learning_rate": 0.02}]},
        search={"num_trials": 2},  # no max_concurrent: planned from the 2 CPUs and the GPU share
        training={"max_steps": 400},
        resources={"cpus_per_worker": 1, "gpus_per_worker": 0.5},
    )
    print(
        "\n"
        + trials[["candidate", "status", "device", "peak_memory_bytes", "est_peak_memory_bytes"]].to_string()
    )
    assert json.loads((search_dir / "run.json").read_text())["concurrency"] == 2
    assert (trials["status"] == "complete").all(), trials["error"].tolist()
    assert (trials["device"] == "cuda").all()
    (a0, a1), (b0, b1) = (_span(p) for p in sorted((search_dir / "tune").glob("trial-*/result.json")))
    assert a0 < b1 and b0 < a1, "the two trials did not overlap"


@gpu
@needs_cuda
@pytest.mark.slow
def test_each_trial_sees_only_its_gpu_and_frees_it(ray_local, small_bert, classification_csv, tmp_path):
    """Two half-GPU Ray tasks at once: each sees exactly the device Ray gave it, the 4-bit model lives there, and
    the trial's GPU memory is back to where it started when ``run_trial`` returns."""
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("Ray sees no GPU")
    prep, settings = prepared(small_bert, classification_csv, "sequence-classification", tmp_path)
    settings = dataclasses.replace(settings.with_config(resources={"gpus_per_worker": 0.5}), steps=5)
    trial = sample_trial(prep, "lora", quantization="nf4")

    @ray.remote(num_cpus=1, num_gpus=0.5)
    def probe(trial, settings, data):
        import os

        import ray
        import torch

        from peft_search.search.inputs.modeling import load_base_model
        from peft_search.search.worker.training import run_trial

        device = torch.device("cuda", 0)  # the first (and only) device Ray leaves visible
        baseline = torch.cuda.memory_allocated(device)
        model = load_base_model(
            settings.model_path,
            settings.task,
            num_labels=data.num_labels,
            quantization="nf4",
            device=device,
            pad_token_id=data.pad_token_id,
        )
        placed = {str(p.device) for p in model.parameters()}
        layer = type(model.bert.encoder.layer[0].attention.self.query).__name__
        del model
        metrics, adapter_dir = run_trial(trial, settings, data, device=device)
        adapter_dir.cleanup()
        # cuBLAS keeps its workspaces in the caching allocator until told otherwise; they are not the trial's.
        getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()
        torch.cuda.empty_cache()
        return {
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "assigned": [str(i) for i in ray.get_gpu_ids()],
            "device_count": torch.cuda.device_count(),
            "placed": placed,
            "layer": layer,
            "baseline": baseline,
            "after": torch.cuda.memory_allocated(device),
            "peak": metrics["peak_memory_bytes"],
            "kind": metrics["peak_memory_kind"],
        }

    results = ray.get([probe.remote(trial, settings, prep.data) for _ in range(2)])
    for r in results:
        print(
            f"\nCUDA_VISIBLE_DEVICES={r['visible']} peak {r['peak']:,} B, left {r['after'] - r['baseline']:,} B"
        )
        assert r["visible"] is not None and r["visible"].split(",") == r["assigned"], r
        assert len(r["assigned"]) == 1 and r["device_count"] == 1, r
        assert r["placed"] == {"cuda:0"} and r["layer"] == "Linear4bit", r
        assert r["kind"] == "gpu_allocated" and r["peak"] > 0, r
        # Small against the ~1 MB of 4-bit weights (and the trial's peak): no model, adapter or optimizer state left.
        assert r["after"] - r["baseline"] < 128 * 1024, r

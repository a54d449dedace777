"""DDP acceptance: a 2-worker trial (Ray Train, gloo on CPU) reports what the 1-worker trial of the same config does.

Why the numbers agree: both trials train with ``transformers.Trainer``, whose Accelerate dataloader draws the same
seeded order and gives each rank its consecutive share of every global batch, so a step covers the same
``training.batch_size`` rows whatever the number of workers; each rank's loss is the mean over its half (the
classifier's loss ignores the Trainer's token counts, so it is not rescaled: ``search.worker.trainer``), and DDP
averages the two gradients, which is the mean over the whole batch: the single worker's gradient. Both start from the same weights (same seed; DDP also broadcasts rank
0's), so AdamW takes the same steps. What is left is float summation order (and gloo's all-reduce), hence a small
tolerance on the loss. The model has no dropout here: dropout masks depend on how rows are split across ranks.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from peft_search.search.loop.driver import run_search
from peft_search.search.results.layout import ResultsDir
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow

CANDIDATE = {
    "name": "lora-qv",
    "learning_rate": 0.02,
    "peft_config": {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": 4,
        "target_modules": ["query", "value"],
    },
}


def _search(model: str, data: str, results: Path, name: str, num_workers: int) -> pd.Series:
    cfg = tiny_config(
        model,
        data,
        name=name,
        results_dir=str(results),
        space={"methods": [], "candidates": [CANDIDATE]},
        search={"num_trials": 1, "seed": 0, "max_concurrent": 1},
        training={"max_steps": 6, "batch_size": 8, "warmup_ratio": 0.0},
        resources={"num_workers": num_workers, "cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    trials = ResultsDir(search_dir).read_trials()  # its adapter_path where the search is
    assert len(trials) == 1
    return trials.iloc[0]


def test_two_workers_report_what_one_worker_does(
    ray_local, bert_without_dropout, classification_csv, tmp_path
):
    one = _search(bert_without_dropout, classification_csv, tmp_path, "one-worker", 1)
    two = _search(bert_without_dropout, classification_csv, tmp_path, "two-workers", 2)
    assert one["status"] == two["status"] == "complete", (one["error"], two["error"])
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["train_steps"] == two["train_steps"] == 6
    assert one["trainable_params"] == two["trainable_params"]
    assert one["total_params"] == two["total_params"]
    # Before global batches were split by rank the 2-worker run saw twice the rows per step: 1.1060 against 1.1013.
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=1e-4, rel=1e-4)
    assert two["accuracy"] == one["accuracy"]
    # The adapter of the 2-worker run is rank 0's and holds the same weights as the 1-worker one.
    from safetensors.torch import load_file

    a = load_file(str(Path(one["adapter_path"]) / "adapter_model.safetensors"))
    b = load_file(str(Path(two["adapter_path"]) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-4, key

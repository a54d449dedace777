"""Training batches: the Trainer's own dataloader over the trial's rows, with the search's collator (dynamic
padding) and ``training.train_sampling_strategy`` (transformers' ``LengthGroupedSampler``)."""

from __future__ import annotations

import random

import torch

from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.settings.trial import TrialConfig, TrialSettings
from peft_search.search.worker.trainer import build_trainer, training_arguments
from tests.helpers import tiny_config


def _data(n: int = 256, seed: int = 0) -> TokenizedSplits:
    rng = random.Random(seed)
    rows = [{"input_ids": [5] * rng.randint(4, 120), "label": i % 3} for i in range(n)]
    return TokenizedSplits(train=rows, eval=[], pad_token_id=0, num_labels=3)


def _loader(data, strategy: str, tmp_path="/tmp", **training):
    cfg = tiny_config(
        "m", "d.csv", training={"batch_size": 8, "train_sampling_strategy": strategy, **training}
    )
    settings = TrialSettings(config=cfg, model_path="m", steps=len(data.train) // 8)
    trial = TrialConfig("lora", "none", {"peft_type": "LORA"}, 1e-3)
    args = training_arguments(
        trial, settings, data, output_dir=str(tmp_path), seed=0, device=torch.device("cpu")
    )
    trainer, _ = build_trainer(torch.nn.Linear(2, 2), args, data, [])
    return trainer.get_train_dataloader()


def _padding(loader) -> float:
    real = slots = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
    return 1 - real / slots


def test_batches_pad_to_their_longest_row():
    for batch in _loader(_data(), "random"):
        lengths = batch["attention_mask"].sum(-1)
        assert batch["input_ids"].shape[1] == int(lengths.max())
        assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


def test_group_by_length_pads_less_and_still_covers_every_row():
    data = _data()
    random_pad = _padding(_loader(data, "random"))
    grouped = _loader(data, "group_by_length")
    grouped_pad = _padding(grouped)
    # Lengths 4..120 at random: about half of a random batch is padding; sorted megabatches leave a few percent.
    assert random_pad > 0.3 and grouped_pad < 0.1
    seen = sorted(int(m.sum()) for b in grouped for m in b["attention_mask"])
    assert seen == sorted(
        len(r["input_ids"]) for r in data.train
    )  # one pass: each row once (drop_last: n % 8 = 0)


def test_sampling_is_seeded():
    data = _data()
    first = [b["input_ids"].shape for b in _loader(data, "group_by_length")]
    again = [b["input_ids"].shape for b in _loader(data, "group_by_length")]
    assert first == again


def test_gradient_accumulation_splits_the_batch_into_micro_batches():
    """``training.batch_size`` stays the rows per optimizer step: 2 accumulation steps make batches of 4."""
    data = _data(64)
    shapes = {b["input_ids"].shape[0] for b in _loader(data, "random", gradient_accumulation_steps=2)}
    assert shapes == {4}

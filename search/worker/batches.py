"""Training and evaluation batches: dynamic padding to each batch's longest row, and the training sampler."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader


def pad_batch(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest row of the batch (right-padded; labels padded with -100)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    batch: dict[str, torch.Tensor] = {}
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = 1
    batch["input_ids"], batch["attention_mask"] = ids, mask
    if rows and isinstance(rows[0].get("labels"), list):
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        batch["labels"] = labels
    elif rows and "label" in rows[0]:
        batch["labels"] = torch.tensor([r["label"] for r in rows])
    return batch


def train_loader(
    data,
    batch_size: int,
    seed: int,
    sampling: str,
    device: torch.device,
    world_size: int = 1,
    rank: int = 0,
):
    """The training batches, padded to each batch's longest row.

    ``batch_size`` is the global batch: every rank draws the same batches (same seed) and trains on its slice of
    each, so DDP's averaged gradient is the one-worker gradient and the result does not depend on num_workers.
    ``sampling`` is ``training.train_sampling_strategy``: ``group_by_length`` draws them with transformers' own ``LengthGroupedSampler`` (as the
    Trainer does): rows of similar length share a batch, so less of each batch is padding.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if sampling == "group_by_length":
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = [len(r["input_ids"]) for r in data.train]
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return DataLoader(
        data.train,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(data.train) > batch_size,
        collate_fn=lambda rows: pad_batch(rows[rank::world_size], data.pad_token_id),
        generator=generator,
        pin_memory=device.type == "cuda",  # so the copies to the GPU below do not block
    )

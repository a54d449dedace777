"""Spare cores (``resources.spare_cores``): once no trial is left to start, the running CPU trials take the cores
the ended ones freed, at their next step; only on the local instance the search started."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from peft_search.search.loop import spare
from peft_search.search.loop.driver import run_search
from peft_search.search.worker.spare import SpareCores
from tests.helpers import lora_space, prepared, tiny_config


def test_the_running_trials_split_the_cores_no_trial_holds():
    assert spare.shares(2, 1, ["b"]) == {"b": 2}
    assert spare.shares(8, 1, ["c", "a", "b"]) == {"a": 3, "b": 3, "c": 2}
    assert spare.shares(8, 2, ["a", "b", "c", "d"]) == {t: 2 for t in "abcd"}  # nothing spare
    assert spare.shares(4, 1, []) == {}


def test_a_trial_widens_once_granted_and_never_narrows():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        granted: list[bytes | None] = [None]
        widen = SpareCores(lambda: granted[0])
        widen(3)
        assert torch.get_num_threads() == 1 and widen.label() == "1"
        granted[0] = b"2"
        widen(4)
        widen(5)  # the same grant again changes nothing
        assert torch.get_num_threads() == 2 and widen.label() == "1, then 2 after step 4"
        granted[0] = b"1"
        widen(6)
        assert torch.get_num_threads() == 2
        assert SpareCores(None).label() == "2"  # a search that grants none: the threads it trained on
    finally:
        torch.set_num_threads(before)


def test_the_trials_are_told_not_to_look_where_it_cannot_apply(
    tiny_bert, classification_csv, tmp_path, monkeypatch
):
    """Off on a cluster (an instance this process did not start), for GPU trials and for packed groups."""
    _, settings = prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path)
    assert settings.resources.spare_cores  # the default
    monkeypatch.setattr(spare, "started_here", lambda: True)
    assert spare.applies(settings) and spare.settled(settings) is settings
    gpu = settings.with_config(resources={"gpus_per_worker": 1})
    assert not spare.applies(gpu) and not spare.applies(dataclasses.replace(settings, packing=2))
    off = settings.with_config(resources={"spare_cores": False})
    assert not spare.applies(off) and spare.settled(off) is off
    monkeypatch.setattr(spare, "started_here", lambda: False)  # joined a cluster
    assert not spare.applies(settings) and not spare.settled(settings).resources.spare_cores


@pytest.mark.slow
def test_the_last_trial_takes_the_core_the_others_left(ray_local, tiny_bert, classification_csv, tmp_path):
    """Three one-thread trials two at a time on 2 cores: the third runs alone at the end and widens to both (it
    starts as the first ends, so the second ends while it trains)."""
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space=lora_space(2, 4, 8),
        search={"num_trials": 3, "max_concurrent": 2, "early_stopping": "none"},
        training={"max_steps": 150},
        resources={"cpus_per_worker": 1},
    )
    trials = pd.read_parquet(run_search(cfg, echo=False) / "trials.parquet")
    assert (trials["status"] == "complete").all()
    threads = list(trials["cpu_threads"])
    assert all(t == "1" or t.startswith("1, then 2 after step ") for t in threads), threads
    widened = [t for t in threads if t != "1"]
    assert len(widened) == 1, threads

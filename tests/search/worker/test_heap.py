"""Measuring what CPU trials' heap allocator keeps (``search.worker.heap``): short real trials in a fresh process
with the trials' allocator and threads, cached per machine, and carried into every trial's estimate."""

from __future__ import annotations

import dataclasses

import pytest

from peft_search.search.worker import heap
from tests.helpers import tiny_config


@pytest.mark.slow
def test_the_heap_is_measured_once_in_a_fresh_process_then_read_from_the_cache(
    tiny_bert, classification_csv, tmp_path, monkeypatch, capsys
):
    from peft_search.search.loop.prepare import prepare
    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.costs import plan_trial

    monkeypatch.setenv("PEFT_SEARCH_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(
        tiny_bert, classification_csv, results_dir=str(tmp_path), resources={"cpus_per_worker": 1}
    )
    prep = prepare(cfg)
    model = heap.heap_model(prep.settings, prep.data, ["none", "int8", "none"], None)
    assert model is not None and model.allocator == "system" and model.threads == 1
    assert model.step_share >= 0 and set(model.after_load) == {"int8"}
    again = heap.heap_model(prep.settings, prep.data, ["int8"], None)
    assert again == model
    measuring, measured, cached = capsys.readouterr().out.strip().splitlines()
    assert measuring.startswith("[peft-search] memory estimate: measuring") and "none, int8" in measuring
    assert measured.startswith("[peft-search] memory estimate: the heap keeps system, 1 thread(s): ")
    assert "(measured in" in measured and cached.endswith("(cached)")
    # A level not measured yet is measured (with the rest again); a GPU search has no heap share.
    assert set(heap.heap_model(prep.settings, prep.data, ["nf4"], None).after_load) == {"nf4"}
    gpu = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"gpus_per_worker": 1})})
    assert heap.heap_model(dataclasses.replace(prep.settings, config=gpu), prep.data, ["none"], None) is None
    # Every trial's estimate adds it.
    trial = TrialConfig(
        "lora",
        "int8",
        {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["query"]},
        1e-3,
    )
    without = plan_trial(trial, prep.settings, prep.data.num_labels)
    with_heap = plan_trial(
        trial, dataclasses.replace(prep.settings, heap=model), prep.data.num_labels, device="cpu"
    )
    assert with_heap.heap_bytes == model.kept_bytes(with_heap.activation_bytes, "int8")
    assert with_heap.est_peak_memory_bytes == without.est_peak_memory_bytes + with_heap.heap_bytes


@pytest.mark.slow
def test_a_measurement_that_fails_leaves_the_estimate_without_it_saying_why(
    tiny_bert, classification_csv, tmp_path, monkeypatch, capsys
):
    from peft_search.search.loop.prepare import prepare

    monkeypatch.setenv("PEFT_SEARCH_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path))
    prep = prepare(cfg)
    broken = dataclasses.replace(prep.settings, model_path=str(tmp_path / "no-model-here"))
    assert heap.heap_model(broken, prep.data, ["none"], None) is None
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("[peft-search] memory estimate: the heap allocator's share not measured (")


@pytest.mark.slow
def test_the_measuring_trials_run_as_a_reused_actor_runs_them(
    tiny_bert, classification_csv, tmp_path, monkeypatch
):
    """Each measuring trial in a thread of its own (as Tune runs a trial), an unquantized one first and not counted,
    then the quantized levels, then the unquantized level again: the figures kept are the later ones."""
    import threading

    from peft_search.search.loop.prepare import prepare

    cfg = tiny_config(
        tiny_bert, classification_csv, results_dir=str(tmp_path), resources={"cpus_per_worker": 1}
    )
    prep = prepare(cfg)
    ran = []
    real = heap._short_trial

    def spy(trial, settings, rows, device):
        metrics = real(trial, settings, rows, device)
        ran.append((trial.quantization, threading.current_thread() is threading.main_thread(), metrics))
        return metrics

    scored = []
    real_run = heap.run_trial

    def scoring_spy(trial, settings, data, *, device, widen=None):  # the short trials call run_trial too
        if widen is not None:
            scored.append((trial.quantization, trial.peft_config, len(data.eval)))
        return real_run(trial, settings, data, device=device, widen=widen)

    monkeypatch.setattr(heap, "_short_trial", spy)
    monkeypatch.setattr(heap, "run_trial", scoring_spy)
    measured = heap.measure(prep.settings, prep.data, ["int8", "none"], 1)
    assert [(level, main) for level, main, _ in ran] == [("none", False), ("int8", False), ("none", False)]
    last = ran[-1][2]
    assert measured["none"]["excess"] == int(last["peak_memory_bytes"] - last["est_peak_memory_bytes"])
    assert set(measured) == {"none", "int8"}
    # Each level is also scored on every held-out row by a short trial with the adapter on the last block only, its
    # high-water mark reset once training has ended: what scoring adds.
    assert [level for level, *_ in scored] == ["none", "int8", "none"]
    for _, peft_config, rows in scored:  # the tiny BERT has 2 blocks
        assert peft_config["layers_to_transform"] == [1] and isinstance(peft_config["target_modules"], list)
        assert rows == len(prep.data.eval)
    assert all(isinstance(m["evaluation"], int) and m["evaluation"] >= 0 for m in measured.values())


def test_a_thread_s_error_is_raised_in_the_caller():
    assert heap._in_thread(lambda: 7) == 7
    with pytest.raises(ZeroDivisionError):
        heap._in_thread(lambda: 1 / 0)

"""What CPU trials' heap allocator keeps beyond the planned tensors (``search.plan.heap``): the model fitted from
short measured trials, and how it adds to an estimate."""

from __future__ import annotations

import pytest

from peft_search.search.plan.heap import HeapModel, allocator_name, fit

MIB = 2**20


def test_the_unquantized_excess_gives_the_steps_share_and_a_quantized_load_what_it_keeps_beyond():
    # This machine's figures for MiniLM (glibc, one thread): 3-step LoRA trials at each level.
    measured = {
        "none": {"excess": 219 * MIB, "step": 228 * MIB},
        "nf4": {"excess": 284 * MIB, "step": 228 * MIB},
        "int8": {"excess": 200 * MIB, "step": 232 * MIB},  # less than the share of its step: nothing more
    }
    model = fit(measured, "system", 1)
    assert model.step_share == pytest.approx(219 / 228, abs=1e-3)
    assert model.after_load == {
        "nf4": pytest.approx(284 * MIB - model.step_share * 228 * MIB, rel=1e-3),
        "int8": 0,
    }
    assert model.kept_bytes(100 * MIB, "none") == int(model.step_share * 100 * MIB)
    assert model.kept_bytes(100 * MIB, "nf4") == int(model.step_share * 100 * MIB) + model.after_load["nf4"]
    assert model.kept_bytes(100 * MIB, "fp4") == int(
        model.step_share * 100 * MIB
    )  # not measured: no load term


def test_scoring_is_fitted_as_measured_and_said():
    measured = {
        "none": {"excess": 100 * MIB, "step": 100 * MIB, "evaluation": 256 * MIB},
        "int8": {"excess": 100 * MIB, "step": 100 * MIB, "evaluation": 550 * MIB},
    }
    model = fit(measured, "system", 1)
    assert model.evaluation == {"none": 256 * MIB, "int8": 550 * MIB}
    assert model.eval_bytes("int8") == 550 * MIB and model.eval_bytes("nf4") == 0  # not measured: none
    assert model.describe() == (
        "system, 1 thread(s): 1.00x a training step's tensors; scoring the held-out rows none +256 MiB, "
        "int8 +550 MiB"
    )
    # A cached model of before the scoring measurement reads back with none (and is measured again: its key differs).
    old = {"allocator": "system", "threads": 1, "step_share": 1.0, "after_load": {}}
    assert HeapModel(**old).evaluation == {}


def test_an_allocator_that_keeps_nothing_adds_nothing():
    model = fit({"none": {"excess": -5 * MIB, "step": 100 * MIB}}, "jemalloc", 2)
    assert model.step_share == 0.0 and model.kept_bytes(100 * MIB, "none") == 0
    assert model.describe() == "jemalloc, 2 thread(s): 0.00x a training step's tensors"


def test_the_allocator_is_named_from_the_trials_environment(monkeypatch):
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    assert allocator_name(None) == allocator_name({}) == "system"
    assert allocator_name({"LD_PRELOAD": "libjemalloc.so.2"}) == "jemalloc"
    both = {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": "dirty_decay_ms:-1"}
    assert allocator_name(both) == "jemalloc (dirty_decay_ms:-1)"


def test_a_model_reads_back_from_its_cached_fields():
    import dataclasses

    model = HeapModel("system", 1, 1.015, {"int8": 0, "nf4": 58_744_832})
    assert HeapModel(**dataclasses.asdict(model)) == model


def test_the_estimate_is_the_larger_phase_a_training_step_or_scoring():
    from peft_search.search.plan.planning import Plan

    mib = 2**20
    common = dict(
        trainable_params=1000,
        total_params=10**6,
        adapter_bytes=4 * mib,
        weight_bytes=100 * mib,
        adapter_state_bytes=16 * mib,
        runtime_bytes=500 * mib,
        heap_step_bytes=30 * mib,
        heap_load_bytes=60 * mib,
    )
    # A large step decides: weights, runtime, adapter with its gradients and moments, the step, what the heap keeps.
    big = Plan(activation_bytes=300 * mib, eval_bytes=200 * mib, **common)
    assert big.est_peak_memory_bytes == (100 + 500 + 16 + 300 + 30 + 60) * mib
    # A small step (few blocks adapted) leaves the peak to scoring: weights, runtime, the adapter's weights, and what
    # scoring adds (the heap's keep measured in it).
    small = Plan(activation_bytes=20 * mib, eval_bytes=200 * mib, **common)
    assert small.est_peak_memory_bytes == (100 + 500 + 4 + 200) * mib
    assert Plan(activation_bytes=20 * mib, **common).est_peak_memory_bytes == (100 + 500 + 16 + 20 + 90) * mib
    # A packed group of two small-step members: one base model and runtime, both adapters, the larger scoring.
    from peft_search.search.worker.packed.plan import group_peak_bytes

    assert group_peak_bytes([small, small]) == (100 + 500 + 2 * 4 + 200) * mib
    assert group_peak_bytes([big, big]) == (100 + 500 + 60 + 2 * (16 + 300 + 30)) * mib

"""Packed trials (``search.worker.packed``): a member of a group trains to the adapter it would get alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from peft_search.search.loop.prepare import prepare
from peft_search.search.settings.trial import TrialConfig
from peft_search.search.worker.batches import pad_batch
from peft_search.search.worker.packed import plan as packable
from peft_search.search.worker.packed.auto import measure_packing, packing_speedup
from peft_search.search.worker.packed.group import load_group, pack_key, run_group
from peft_search.search.worker.packed.plan import packing_refusal, packing_size
from peft_search.search.worker.packed.router import AdapterRouter
from peft_search.search.worker.packed.trainer import Member
from peft_search.search.worker.training import run_trial
from tests.helpers import tiny_config

BASE = {"peft_type": "LORA", "task_type": "SEQ_CLS", "lora_dropout": 0.0}
TRIALS = [
    # Different ranks, targets, scaling (rsLoRA), learning rates, weight decay and clipping: each its own.
    TrialConfig(
        "lora", "none", {**BASE, "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}, 0.02
    ),
    TrialConfig(
        "rslora",
        "none",
        {
            **BASE,
            "r": 2,
            "lora_alpha": 4,
            "use_rslora": True,
            "target_modules": ["query", "key", "value", "dense"],
        },
        0.005,
        training={"weight_decay": 0.1, "max_grad_norm": 0.05},
    ),
    TrialConfig("lora", "none", {**BASE, "r": 8, "lora_alpha": 8, "target_modules": ["value"]}, 0.05),
]


@pytest.fixture(scope="module")
def prep(bert_without_dropout, classification_csv, tmp_path_factory):
    cfg = tiny_config(
        bert_without_dropout,
        classification_csv,
        results_dir=str(tmp_path_factory.mktemp("packing")),
        training={"max_steps": 6, "batch_size": 8, "warmup_ratio": 0.34, "logging_steps": 1},
    )
    return prepare(cfg)


def _weights(adapter) -> dict[str, torch.Tensor]:
    weights = load_file(f"{adapter.name}/adapter_model.safetensors")
    adapter.cleanup()
    return weights


@pytest.mark.slow
def test_a_member_of_a_group_trains_to_the_adapter_it_gets_alone(prep):
    settings, data = prep.settings, prep.data
    cpu = torch.device("cpu")
    assert len({pack_key(t, settings) for t in TRIALS}) == 1
    packed = run_group([(f"t{i}", t) for i, t in enumerate(TRIALS)], settings, data, device=cpu)
    for i, trial in enumerate(TRIALS):
        alone, adapter = run_trial(trial, settings, data, device=cpu)
        together, packed_adapter = packed[f"t{i}"]
        mine, theirs = _weights(adapter), _weights(packed_adapter)
        assert mine.keys() == theirs.keys(), trial.method
        for key in mine:
            assert torch.allclose(mine[key], theirs[key], atol=2e-6, rtol=1e-4), (i, key)
        assert (mine[key] != 0).any()  # trained: lora_B starts at zero
        assert together["accuracy"] == alone["accuracy"]
        assert together["eval_loss"] == pytest.approx(alone["eval_loss"], abs=1e-5)
        assert together["trainable_params"] == alone["trainable_params"]
        assert together["total_params"] == alone["total_params"]
        assert together["heldout_rows"] == alone["heldout_rows"]
        for key in ("loss", "learning_rate"):
            assert together["learning_curve"][key] == pytest.approx(alone["learning_curve"][key], rel=1e-4)
        assert together["group_size"] == len(TRIALS)
    # The group's plan holds the base model once: above any member's own plan, below their sum.
    alone_plans = [packed[f"t{i}"][0]["est_peak_memory_bytes"] for i in range(len(TRIALS))]
    group_plan = packed["t0"][0]["est_group_peak_memory_bytes"]
    assert max(alone_plans) < group_plan < sum(alone_plans)


@pytest.mark.slow
def test_with_gradient_checkpointing_each_member_trains_to_its_alone_adapter(prep):
    """Gradient checkpointing runs each layer's forward again in the backward pass: the rows' routing holds there
    too (it did not: the recomputed forward went through one adapter and torch refused the mismatch)."""
    cpu = torch.device("cpu")
    settings = prep.settings.with_config(training={"gradient_checkpointing": True})
    packed = run_group([(f"t{i}", t) for i, t in enumerate(TRIALS)], settings, prep.data, device=cpu)
    for i, trial in enumerate(TRIALS):
        alone, adapter = run_trial(trial, settings, prep.data, device=cpu)
        together, packed_adapter = packed[f"t{i}"]
        assert "error" not in together, together.get("error")
        mine, theirs = _weights(adapter), _weights(packed_adapter)
        for key in mine:
            assert torch.allclose(mine[key], theirs[key], atol=2e-6, rtol=1e-4), (i, key)
        assert together["eval_loss"] == pytest.approx(alone["eval_loss"], abs=1e-5)


def test_the_router_computes_what_peft_mixed_adapter_batches_compute(prep):
    """Each run of rows through its own adapter, the base layer once (the router's split), gives the outputs and
    gradients PEFT's own mixed-adapter-batch forward gives: runs in any order, a member back in a second run, and
    layers one member does not adapt (other targets)."""
    cpu = torch.device("cpu")
    members = [Member(f"t{i}", t, f"member_{i}", t.learning_rate, 0.0, 1.0) for i, t in enumerate(TRIALS)]
    model, _, _ = load_group(members, prep.settings, prep.data, cpu)
    for p in model.parameters():  # lora_B starts at zero: make every adapter's output count
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    rows = [prep.data.train[i] for i in range(5)]
    batch = pad_batch(rows + rows[:3] + rows[:4], prep.data.pad_token_id)
    labels = batch.pop("labels")
    names = ["member_1"] * 5 + ["member_0"] * 3 + ["member_2"] * 2 + ["member_1"] * 2

    def step():
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    model.eval()  # PEFT routes rows by name in eval mode only; no dropout here anyway
    router = AdapterRouter(model)
    router.names = names
    mine, my_grads = step()
    router.remove()
    with model._enable_peft_forward_hooks(adapter_names=names):  # PEFT's own per-row routing
        theirs, their_grads = step()
    assert torch.allclose(mine, theirs, atol=1e-6)
    assert my_grads.keys() == their_grads.keys()
    assert {m.name for m in members} <= {n for key in my_grads for n in key.split(".")}
    for key in my_grads:
        assert torch.allclose(my_grads[key], their_grads[key], atol=1e-6, rtol=1e-4), key


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_a_quantized_group_trains_each_member_to_its_alone_adapter(prep, quantization):
    """8-bit and 4-bit LoRA layers (bitsandbytes) split by the router as plain ones are: each member still trains to
    its adapter alone."""
    cpu = torch.device("cpu")
    trials = [dataclasses.replace(t, quantization=quantization) for t in TRIALS[:2]]
    packed = run_group([(f"t{i}", t) for i, t in enumerate(trials)], prep.settings, prep.data, device=cpu)
    for i, trial in enumerate(trials):
        alone, adapter = run_trial(trial, prep.settings, prep.data, device=cpu)
        together, packed_adapter = packed[f"t{i}"]
        mine, theirs = _weights(adapter), _weights(packed_adapter)
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.allclose(mine[key], theirs[key], atol=2e-6, rtol=1e-4), (quantization, i, key)
        assert together["eval_loss"] == pytest.approx(alone["eval_loss"], abs=1e-5)


def test_a_member_stopped_at_a_rung_leaves_and_the_others_train_on(prep):
    settings = dataclasses.replace(prep.settings, rungs=(2, 4))
    seen: list[tuple[str, int]] = []

    def on_rung(member: str, result: dict) -> bool:
        seen.append((member, result["rung_step"]))
        return member != "t1"  # the search stops t1 at its first rung

    packed = run_group(
        [(f"t{i}", t) for i, t in enumerate(TRIALS)],
        settings,
        prep.data,
        device=torch.device("cpu"),
        on_rung=on_rung,
    )
    assert seen == [("t0", 2), ("t1", 2), ("t2", 2), ("t0", 4), ("t2", 4)]
    assert packed["t1"] == ({"trial_status": "running", "rung_step": 2}, None)
    assert {packed[t][0]["trial_status"] for t in ("t0", "t2")} == {"complete"}
    assert packed["t0"][0]["learning_curve"]["eval_step"] == [2, 4]


@pytest.fixture(scope="module")
def prep_accumulating(bert_without_dropout, classification_csv, tmp_path_factory):
    """Batches of 9 rows in 3 micro-batches of 3: an epoch of the 24 training rows is 8 micro-batches, so its last
    optimizer step takes 2 (as the Trainer does at an epoch's end)."""
    cfg = tiny_config(
        bert_without_dropout,
        classification_csv,
        results_dir=str(tmp_path_factory.mktemp("packing-accumulating")),
        training={
            "max_steps": 6,
            "batch_size": 9,
            "gradient_accumulation_steps": 3,
            "warmup_ratio": 0.34,
            "logging_steps": 1,
        },
    )
    return prepare(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("accumulating", [False, True])
def test_a_member_joining_a_running_group_trains_to_the_adapter_it_gets_alone(request, accumulating):
    """A slot a stopped member frees goes to a new trial while the group trains: the newcomer draws its own rows in
    the order a trial alone draws them (epoch after epoch; with gradient accumulation, the shorter last step of an
    epoch too), follows its own schedule from the step it joined and starts from the adapter it would start from
    alone; its adapter (on layers no other member had) equals its alone twin's, and so does that of the member that
    trained through."""
    prep = request.getfixturevalue("prep_accumulating" if accumulating else "prep")
    settings = dataclasses.replace(prep.settings, rungs=(2, 4), packing=2)
    cpu = torch.device("cpu")
    first, stopped, joiner = TRIALS[0], TRIALS[2], TRIALS[1]  # the joiner adds key and dense layers
    asked: list[list[str]] = []
    finished: list[str] = []
    results: dict[str, tuple] = {}

    def take(live: list[str]) -> list[tuple[str, TrialConfig]]:
        asked.append(live)
        return [("t2", joiner)] if live == ["t0"] and "t2" not in sum(asked[:-1], []) else []

    def on_done(trial_id: str, metrics: dict, adapter) -> None:
        finished.append(trial_id)
        results[trial_id] = (metrics, adapter)

    returned = run_group(
        [("t0", first), ("t1", stopped)],
        settings,
        prep.data,
        device=cpu,
        on_rung=lambda member, result: member != "t1",
        take=take,
        on_done=on_done,
    )
    assert finished == ["t0", "t2"]  # each as soon as it was done: t0 at the group's step 6, t2 at its 8
    assert returned["t1"] == ({"trial_status": "running", "rung_step": 2}, None)
    assert results["t2"][0]["group_start_step"] == 2 and results["t0"][0]["group_start_step"] == 0
    assert results["t2"][0]["learning_curve"]["eval_step"] == [2, 4]
    for trial_id, trial in (("t0", first), ("t2", joiner)):
        alone, adapter = run_trial(trial, settings, prep.data, device=cpu)
        together, packed_adapter = results[trial_id]
        mine, theirs = _weights(adapter), _weights(packed_adapter)
        assert mine.keys() == theirs.keys(), trial_id
        for key in mine:
            assert torch.allclose(mine[key], theirs[key], atol=2e-6, rtol=1e-4), (trial_id, key)
        assert together["eval_loss"] == pytest.approx(alone["eval_loss"], abs=1e-5)
        assert together["trainable_params"] == alone["trainable_params"]
        for key in ("loss", "learning_rate"):
            assert together["learning_curve"][key] == pytest.approx(alone["learning_curve"][key], rel=1e-4)
        assert together["learning_curve"]["step"] == alone["learning_curve"]["step"]


def test_what_cannot_pack_says_why():
    assert packing_refusal(TRIALS[0].peft_config) is None
    assert "DoRA" in packing_refusal({**BASE, "use_dora": True})
    assert "base weights" in packing_refusal({**BASE, "init_lora_weights": "pissa"})
    assert "IA3" in packing_refusal({"peft_type": "IA3"})


def test_measuring_packing_changes_no_weight_flag_or_random_state(prep):
    """``packing_speedup`` (what ``search.packing: auto`` decides by) is a ratio of step costs, and runs forward and
    backward passes only: every weight, trainable flag and the random state are as they were, no gradient is left."""
    cpu = torch.device("cpu")
    members = [Member(f"t{i}", t, f"member_{i}", t.learning_rate, 0.0, 1.0) for i, t in enumerate(TRIALS)]
    model, refused, _ = load_group(members, prep.settings, prep.data, cpu)
    assert refused == []
    router = AdapterRouter(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    rng = torch.get_rng_state()
    speedup = packing_speedup(model, router, members, prep.data, prep.settings, cpu)
    assert 0 < speedup < 100
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert all(torch.equal(p, weights[n]) and p.grad is None for n, p in model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert router.names is None


@pytest.mark.parametrize(
    ("pays", "grows", "sizes", "chosen"),
    [(False, False, [3], 1), (True, False, [3, 6], 3), (True, True, [3, 6, 12], 12)],
)
def test_auto_measures_larger_groups_while_they_pay_more(prep, monkeypatch, pays, grows, sizes, chosen):
    """What a search measures (``packing_speedup`` for K copies of one LoRA on every linear layer): its size first,
    then twice as many while the last size measured is the one ``packing_size`` takes (the bars set here so that
    each way is taken), up to four times its size."""
    monkeypatch.setattr(packable, "PACKING_PAYS", 0.0 if pays else float("inf"))
    monkeypatch.setattr(packable, "PACKING_GROWS", 0.0 if grows else float("inf"))
    settings = dataclasses.replace(prep.settings, packing=3)
    speedups = measure_packing(settings, prep.data, "none", device=torch.device("cpu"))
    assert sorted(speedups) == sizes
    assert all(0 < s < 100 for s in speedups.values())
    assert packing_size(speedups) == chosen


def test_auto_packs_at_the_smallest_size_that_pays_then_larger_while_faster_again():
    assert packing_size({4: 0.6}) == 1
    assert packing_size({4: 1.1}) == 1
    assert packing_size({4: 1.2}) == 4
    assert packing_size({4: 2.0, 8: 2.1}) == 4  # a full device: 8 gains too little
    assert packing_size({4: 2.0, 8: 3.6, 16: 3.7}) == 8
    assert packing_size({4: 2.0, 8: 3.6, 16: 6.0}) == 16
    assert (
        packing_size({16: 6.0, 4: 2.0, 8: 2.1}) == 4
    )  # by size, whatever the order: 16 is not measured past 8


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_causal_lm_member_trains_to_the_adapter_it_gets_alone(tiny_llama, tmp_path, accumulation):
    """Causal LM: each member's loss is over its own answer tokens, as the model computes it alone (with gradient
    accumulation, over the answer tokens of all the step's micro-batches, as the Trainer counts them: answers of
    different lengths make that differ from a mean of each micro-batch's mean)."""
    import random

    import pandas as pd

    from tests.conftest import WORDS, make_text

    rng = random.Random(2)
    rows = [
        {
            "prompt": make_text(label, rng) + " topic :",
            "answer": " ".join(rng.sample(WORDS[label], rng.randint(1, 4))),
        }
        for label in WORDS
        for _ in range(12)
    ]
    qa = tmp_path / "qa.jsonl"
    pd.DataFrame(rows).to_json(qa, orient="records", lines=True)
    cfg = tiny_config(
        tiny_llama,
        str(qa),
        "causal-lm",
        results_dir=str(tmp_path),
        training={
            "max_steps": 4,
            "batch_size": 8,
            "gradient_accumulation_steps": accumulation,
            "logging_steps": 1,
        },
    )
    prep = prepare(cfg)
    lora = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "lora_dropout": 0.0}
    trials = [
        TrialConfig("lora", "none", {**lora, "r": 4, "target_modules": ["q_proj", "v_proj"]}, 0.01),
        TrialConfig("lora", "none", {**lora, "r": 2, "target_modules": ["v_proj", "o_proj"]}, 0.02),
    ]
    cpu = torch.device("cpu")
    packed = run_group([(f"t{i}", t) for i, t in enumerate(trials)], prep.settings, prep.data, device=cpu)
    for i, trial in enumerate(trials):
        alone, adapter = run_trial(trial, prep.settings, prep.data, device=cpu)
        together, packed_adapter = packed[f"t{i}"]
        mine, theirs = _weights(adapter), _weights(packed_adapter)
        for key in mine:
            assert torch.allclose(mine[key], theirs[key], atol=2e-6, rtol=1e-4), (accumulation, i, key)
        assert together["learning_curve"]["loss"] == pytest.approx(alone["learning_curve"]["loss"], rel=1e-4)

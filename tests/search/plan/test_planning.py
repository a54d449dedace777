"""Planning without weights: PEFT's exact counts on the meta device, exact adapter size, budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from peft import get_peft_config, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.plan.planning import meta_model, plan_candidate
from peft_search.search.settings.schema import Budget
from peft_search.search.worker.costs import check_budget
from peft_search.search.worker.training import run_trial
from tests.helpers import prepared, sample_trial

T = ["query", "key", "value", "dense"]
# The methods issue 4 names, each as a PEFT adapter_config dict for the tiny BERT.
CONFIGS = {
    "lora": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": T},
    "dora": {"peft_type": "LORA", "r": 4, "target_modules": T, "use_dora": True},
    "rslora": {"peft_type": "LORA", "r": 4, "target_modules": T, "use_rslora": True},
    "adalora": {"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "target_modules": T, "total_step": 50},
    "loha": {"peft_type": "LOHA", "r": 4, "target_modules": T},
    "lokr": {"peft_type": "LOKR", "r": 4, "target_modules": T},
    "vera": {"peft_type": "VERA", "r": 16, "target_modules": ["query", "value"], "save_projection": True},
    "ia3": {
        "peft_type": "IA3",
        "target_modules": ["key", "value", "dense"],
        "feedforward_modules": ["dense"],
    },
    "prefix_tuning": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 5},
    "prompt_tuning": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 5},
    "p_tuning": {"peft_type": "P_TUNING", "num_virtual_tokens": 5, "encoder_hidden_size": 16},
    "ln_tuning": {"peft_type": "LN_TUNING", "target_modules": ["LayerNorm"]},
    "boft": {"peft_type": "BOFT", "boft_block_size": 4, "target_modules": ["query", "value"]},
    "oft": {"peft_type": "OFT", "r": 0, "oft_block_size": 4, "target_modules": ["query", "value"]},
    "fourierft": {"peft_type": "FOURIERFT", "n_frequency": 100, "target_modules": ["query", "value"]},
    "vblora": {
        "peft_type": "VBLORA",
        "r": 4,
        "num_vectors": 32,
        "vector_length": 8,
        "target_modules": ["query", "value"],
    },
    "bitfit": {"peft_type": "BEFT", "target_modules": T},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plan_counts_equal_peft_on_the_real_model(tiny_bert, name, tmp_path):
    config = {**CONFIGS[name], "task_type": "SEQ_CLS"}
    plan = plan_candidate(
        meta_model(tiny_bert, "sequence-classification", 3),
        config,
        quantization="none",
        batch_size=4,
        seq_len=16,
    )
    torch.manual_seed(0)
    real = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=3, ignore_mismatched_sizes=True
    )
    peft_model = get_peft_model(real, get_peft_config(dict(config)))
    assert (plan.trainable_params, plan.total_params) == peft_model.get_nb_trainable_parameters()
    peft_model.save_pretrained(tmp_path)
    assert plan.adapter_bytes == (tmp_path / "adapter_model.safetensors").stat().st_size


def test_causal_lm_counts(tiny_llama):
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "target_modules": ["q_proj", "v_proj"]}
    plan = plan_candidate(
        meta_model(tiny_llama, "causal-lm", 2), config, quantization="nf4", batch_size=2, seq_len=8
    )
    real = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), get_peft_config(dict(config)))
    assert (plan.trainable_params, plan.total_params) == real.get_nb_trainable_parameters()


@pytest.fixture(scope="module")
def llama_3b_config(tmp_path_factory):
    """A directory holding only the config.json of a 3-billion-parameter Llama (Llama-3.2-3B's shape)."""
    path = tmp_path_factory.mktemp("llama-3b")
    (path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 3072,
                "intermediate_size": 8192,
                "num_hidden_layers": 28,
                "num_attention_heads": 24,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
                "max_position_embeddings": 8192,
                "tie_word_embeddings": True,
                "head_dim": 128,
            }
        )
    )
    return str(path)


def test_three_billion_parameter_model_plans_in_seconds(llama_3b_config):
    start = time.perf_counter()
    base = meta_model(llama_3b_config, "causal-lm", 2)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "target_modules": ["q_proj", "v_proj"]}
    plan = plan_candidate(base, config, quantization="nf4", batch_size=1, seq_len=512)
    elapsed = time.perf_counter() - start
    # LoRA adds r * (in + out) per adapted layer: q is 3072 -> 3072, v is 3072 -> 1024 (8 KV heads x 128).
    assert plan.trainable_params == 28 * 8 * ((3072 + 3072) + (3072 + 1024))
    assert 3.0e9 < plan.total_params < 3.3e9
    assert plan.adapter_bytes > plan.trainable_params * 4
    # 4-bit weights: well under half of the fp32 size, far over nothing.
    assert 0.1 * plan.total_params * 4 < plan.weight_bytes < 0.5 * plan.total_params * 4
    assert elapsed < 20, f"planning took {elapsed:.1f}s"


def test_budget_makes_a_trial_infeasible_before_loading(tiny_bert, classification_csv, tmp_path):
    prep, settings = prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path)
    trial = sample_trial(prep, "lora")
    with pytest.raises(InfeasibleTrialError, match="budget.max_trainable_params"):
        run_trial(
            trial,
            settings.with_config(budget={"max_trainable_params": 10}),
            prep.data,
            device=torch.device("cpu"),
        )
    with pytest.raises(InfeasibleTrialError, match="budget.max_memory"):
        run_trial(
            trial, settings.with_config(budget={"max_memory": 1000}), prep.data, device=torch.device("cpu")
        )
    metrics, adapter_dir = run_trial(trial, settings, prep.data, device=torch.device("cpu"))
    adapter_dir.cleanup()
    assert metrics["est_peak_memory_bytes"] > 0
    assert metrics["adapter_bytes"] == plan_bytes(prep, settings, trial)


def plan_bytes(prep, settings, trial):
    from peft_search.search.worker.costs import plan_trial

    return plan_trial(trial, settings, prep.data.num_labels).adapter_bytes


def test_check_budget_passes_within_limits(tiny_bert):
    plan = plan_candidate(
        meta_model(tiny_bert, "sequence-classification", 3),
        {**CONFIGS["lora"], "task_type": "SEQ_CLS"},
        quantization="none",
        batch_size=4,
        seq_len=16,
    )
    check_budget(
        plan, Budget(max_trainable_params=plan.trainable_params, max_memory=plan.est_peak_memory_bytes)
    )


@pytest.mark.slow
def test_plan_cli_json(tiny_bert, classification_csv, tmp_path):
    only_config = tmp_path / "model"
    only_config.mkdir()
    (only_config / "config.json").write_text(Path(tiny_bert, "config.json").read_text())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "model": {"name_or_path": str(only_config)},
                "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 96},
                "space": {
                    "methods": ["lora", "ia3", "loha"],
                    "quantization": ["none", "nf4"],
                    "candidates": [
                        {"name": "mine", "peft_config": {**CONFIGS["lora"], "task_type": "SEQ_CLS"}}
                    ],
                },
                "budget": {"max_trainable_params": 5000},
            }
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "peft_search", "plan", str(cfg), "--format", "json", "--samples", "4"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 5 and rows[0]["candidate"] == "mine"
    for row in rows:
        assert {
            "method",
            "peft_config",
            "quantization",
            "trainable_params",
            "total_params",
            "adapter_bytes",
            "est_peak_memory_bytes",
        } <= set(row)
    assert rows[0]["over_budget"] == (["max_trainable_params"] if rows[0]["trainable_params"] > 5000 else [])
    table = subprocess.run(
        [sys.executable, "-m", "peft_search", "plan", str(cfg)], capture_output=True, text=True
    )
    assert table.returncode == 0 and "mine" in table.stdout and "est. peak" in table.stdout
    # The held-out split's resolution: 96 rows (all the data leaves) tell apart 10.1 points, over 3: a warning.
    assert "held-out rows: 96 (dataset.eval_size)" in table.stdout and "differ by 10.1 points" in table.stdout
    assert "warning: differences under 10.1 points are noise here" in table.stdout
    assert "held-out rows: 96" in out.stderr  # JSON stays machine-readable on stdout


def test_plan_refuses_a_candidate_peft_cannot_build(tiny_bert, classification_csv, tmp_path, capsys):
    from peft_search.search.cli import main

    cfg = tmp_path / "c.yaml"
    bad = {"name": "bad", "peft_config": {"peft_type": "NOPE", "task_type": "SEQ_CLS"}}
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "model": {"name_or_path": tiny_bert},
                "dataset": {"source": classification_csv, "train_per_class": 8, "eval_size": 12},
                "space": {"methods": ["lora"], "candidates": [bad]},
            }
        )
    )
    assert main(["plan", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "space.candidates[0].peft_config" in err


def _deep(kind: str, blocks: int = 10):
    """A 10-block model on the meta device (hidden size 32): deep enough for ``search.plan.depth``'s shortcut."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        if kind == "bert":
            cfg = BertConfig(
                hidden_size=32,
                num_hidden_layers=blocks,
                num_attention_heads=4,
                intermediate_size=64,
                vocab_size=100,
                num_labels=3,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
            return BertForSequenceClassification(cfg)
        cfg = LlamaConfig(
            hidden_size=32,
            num_hidden_layers=blocks,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=100,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg).to(torch.bfloat16)  # as a bf16 checkpoint's config builds it


LLAMA_T = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
DEEP_CASES = [
    (
        "llama",
        "none",
        False,
        {
            "peft_type": "LN_TUNING",
            "task_type": "CAUSAL_LM",
            "target_modules": ["input_layernorm", "post_attention_layernorm"],
        },
    ),
    ("bert", "none", False, {**CONFIGS["lora"], "task_type": "SEQ_CLS"}),
    (
        "bert",
        "none",
        False,
        {**CONFIGS["lora"], "task_type": "SEQ_CLS", "layers_to_transform": [5, 6, 7, 8, 9]},
    ),
    ("bert", "none", False, {**CONFIGS["ia3"], "task_type": "SEQ_CLS"}),
    (
        "bert",
        "int8",
        False,
        {**CONFIGS["lora"], "task_type": "SEQ_CLS", "layers_to_transform": [0, 2, 4, 6, 8]},
    ),
    ("bert", "none", True, {**CONFIGS["boft"], "task_type": "SEQ_CLS"}),
    ("bert", "none", False, {**CONFIGS["prefix_tuning"], "task_type": "SEQ_CLS"}),
    ("bert", "none", False, {**CONFIGS["bitfit"], "task_type": "SEQ_CLS"}),
    (
        "llama",
        "nf4",
        False,
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "target_modules": LLAMA_T},
    ),
    (
        "llama",
        "nf4",
        True,
        {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": 4,
            "target_modules": LLAMA_T,
            "layers_to_transform": [3, 4, 5, 6],
        },
    ),
    (
        "llama",
        "none",
        False,
        {
            "peft_type": "ADALORA",
            "task_type": "CAUSAL_LM",
            "init_r": 6,
            "target_r": 2,
            "target_modules": LLAMA_T,
            "total_step": 50,
        },
    ),
    (
        "llama",
        "none",
        False,
        {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4},
    ),
    (
        "llama",
        "none",
        False,
        {"peft_type": "LOKR", "task_type": "CAUSAL_LM", "r": 4, "target_modules": LLAMA_T},
    ),
]


@pytest.mark.parametrize("kind,quantization,checkpointing,config", DEEP_CASES)
def test_a_deep_model_is_traced_on_a_few_blocks_with_the_same_figure(
    kind, quantization, checkpointing, config, monkeypatch
):
    """``search.plan.depth``: the step traced on 2- and 3-block copies gives the whole model's traced peak within
    1 %, and the counts are PEFT's own either way. The shortcut can miss by one hidden-state-sized transient where
    the peak's moment shifts: a few percent of a toy step at 16 tokens, so the rows here are 64 tokens (on the
    18-config Llama-3.2-3B plan of benchmarks.plan it is exact for every config)."""
    import peft_search.search.plan.depth as depth

    def plan(base):
        return plan_candidate(
            base,
            config,
            quantization=quantization,
            batch_size=4,
            seq_len=64,
            gradient_checkpointing=checkpointing,
            device="cuda",
        )

    import peft_search.search.plan.planning as planning

    traced = []  # the depth of every model whose step is traced
    step_peaks = planning.step_peaks
    monkeypatch.setattr(
        planning,
        "step_peaks",
        lambda base, *a, **k: traced.append(depth.num_blocks(base)) or step_peaks(base, *a, **k),
    )
    shortcut = plan(_deep(kind))
    partial = "layers_to_transform" in config
    # Only copies of 2 and 3 blocks were traced (the whole model: gradient checkpointing with some blocks bare).
    assert set(traced) == ({10} if checkpointing and partial else {2, 3})
    monkeypatch.setattr(depth, "MIN_BLOCKS", 1000)  # every block traced, as before the shortcut
    whole = plan(_deep(kind))
    assert shortcut.traced and whole.traced
    assert shortcut.activation_bytes == pytest.approx(whole.activation_bytes, rel=0.01)
    assert (shortcut.trainable_params, shortcut.total_params, shortcut.adapter_bytes) == (
        whole.trainable_params,
        whole.total_params,
        whole.adapter_bytes,
    )


def test_plan_adds_the_measured_heap_share_or_says_it_is_not_measured_yet(
    tiny_bert, classification_csv, tmp_path, monkeypatch
):
    """CPU estimates include what the heap allocator keeps once a run measured it (``search.plan.heap``); before,
    the plan says it is left out, under its table."""
    import dataclasses

    from peft_search.search.plan.baseline import write_cache
    from peft_search.search.plan.heap import HEAP_CACHE, HeapModel, cache_key
    from peft_search.search.plan.planning import format_plan, plan_search
    from tests.helpers import tiny_config

    monkeypatch.setenv("PEFT_SEARCH_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(tiny_bert, classification_csv, resources={"cpus_per_worker": 1})
    before = plan_search(cfg, samples=2)
    assert "not in these estimates yet" in format_plan(before)
    assert {(r["est_breakdown"]["heap_step"], r["est_breakdown"]["heap_load"]) for r in before} == {(0, 0)}
    model = HeapModel("system", 1, 0.5, {"nf4": 1_000_000})
    write_cache(HEAP_CACHE, cache_key(cfg, cfg.model.resolved_path(), "system", 1), dataclasses.asdict(model))
    after = plan_search(cfg, samples=2)
    assert "includes what the heap allocator keeps, measured here: system, 1 thread(s): 0.50x" in format_plan(
        after
    )
    for old, new in zip(before, after, strict=True):
        step = new["est_breakdown"]["training_step"]
        heap = new["est_breakdown"]["heap_step"] + new["est_breakdown"]["heap_load"]
        assert heap == int(0.5 * step) + (1_000_000 if new["quantization"] == "nf4" else 0)
        assert new["est_peak_memory_bytes"] - heap == (
            old["est_peak_memory_bytes"] - old["est_breakdown"]["runtime"] + new["est_breakdown"]["runtime"]
        )
    at_two = plan_search(
        tiny_config(tiny_bert, classification_csv, resources={"cpus_per_worker": 2}), samples=1
    )
    assert "not in these estimates yet" in format_plan(at_two)  # measured at 1 thread: not for 2


@pytest.mark.slow
def test_candidates_planned_side_by_side_give_the_same_rows(
    tiny_bert, classification_csv, monkeypatch, tmp_path
):
    """``--jobs``: candidates planned in forked processes give the rows planned one by one, in the same order,
    refusals included; the runtime baseline is measured once and then read from the cache."""
    from peft_search.search.plan import baseline as runtime
    from peft_search.search.plan.planning import plan_search
    from tests.helpers import tiny_config

    monkeypatch.setenv("PEFT_SEARCH_CACHE", str(tmp_path / "cache"))
    refused = {**CONFIGS["boft"], "task_type": "SEQ_CLS", "boft_block_size": 5}  # 5 does not divide 32
    candidates = [
        {"name": "lora", "peft_config": {**CONFIGS["lora"], "task_type": "SEQ_CLS"}},
        {
            "name": "ia3-int8",
            "quantization": "int8",
            "peft_config": {**CONFIGS["ia3"], "task_type": "SEQ_CLS"},
        },
        {"name": "boft-5", "peft_config": refused},
    ]
    cfg = tiny_config(
        tiny_bert, classification_csv, space={"methods": ["lora", "loha"], "candidates": candidates}
    )
    measured = []
    real = runtime.RuntimeBaseline.bytes

    def bytes_(self):
        measured.append(self.measured)
        return real(self)

    monkeypatch.setattr(runtime.RuntimeBaseline, "bytes", bytes_)
    alone = plan_search(cfg, samples=3, jobs=1)
    forked = plan_search(cfg, samples=3, jobs=2)
    assert forked == alone
    assert [r["candidate"] for r in alone][:3] == ["lora", "ia3-int8", "boft-5"] and len(alone) == 6
    assert "error" in alone[2] and "error" not in alone[0]
    assert measured == [True, False]  # the second plan read the first one's measurement
    assert alone[0]["est_breakdown"]["runtime"] > 100 * 2**20  # Python + torch + transformers resident


@pytest.mark.slow
def test_map_forked_workers_end_on_their_own_beside_ray(ray_local, capfd):
    """Under Ray (the driver plans after it connects), the pool's workers are not ended by SIGTERM: Ray's handler,
    inherited by a forked child, logs a stack trace and can hang there for good (a CI run waited 900 s)."""
    from peft_search.search.plan.pool import map_forked

    for _ in range(5):
        assert [r[0] for r in map_forked(lambda i: (i * i, os.getpid()), 4, 2)] == [0, 1, 4, 9]
    assert "SIGTERM received" not in capfd.readouterr().err


def test_map_forked_keeps_order_and_raises_a_workers_error():
    from peft_search.search.plan.pool import map_forked, resolve_jobs

    assert list(map_forked(lambda i: (i, os.getpid()), 5, 1)) == [(i, os.getpid()) for i in range(5)]
    results = map_forked(lambda i: (i * i, os.getpid()), 6, 2)
    assert [r[0] for r in results] == [i * i for i in range(6)]
    assert os.getpid() not in {r[1] for r in results}  # they ran in forked workers

    def fails(i):
        if i == 3:
            raise ValueError("candidate 3 failed")
        return i

    with pytest.raises(ValueError, match="candidate 3 failed"):
        map_forked(fails, 5, 2)
    assert resolve_jobs(0) >= 1 and resolve_jobs(3) == 3
    with pytest.raises(ValueError, match="jobs: -1"):
        resolve_jobs(-1)

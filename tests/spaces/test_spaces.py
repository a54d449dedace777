"""The registry and the define-by-run space, with real Optuna studies and real PEFT configs."""

from __future__ import annotations

import optuna
import pytest
from peft import get_peft_config

from peft_search import spaces
from peft_search.spaces.sampling import SAMPLED, Candidate, DefineByRun, SpaceSpec, enqueue_candidates
from peft_search.spaces.targets import minimal_suffixes, resolve_target_sets

BERT = [
    f"bert.encoder.layer.{i}.{s}"
    for i in range(2)
    for s in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
] + ["bert.pooler.dense", "classifier"]
LLAMA = [
    f"model.layers.{i}.{s}"
    for i in range(2)
    for s in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
] + ["lm_head"]
REQUIRED = {
    "lora",
    "adalora",
    "loha",
    "lokr",
    "vera",
    "ia3",
    "prefix_tuning",
    "prompt_tuning",
    "p_tuning",
    "ln_tuning",
    "bitfit",
}


def _ctx(**kw):
    sets, mlp = resolve_target_sets(BERT)
    return spaces.SpaceContext(
        task_type="SEQ_CLS", num_layers=2, target_sets=sets, mlp_targets=mlp, norm_targets=["LayerNorm"], **kw
    )


def test_required_families_are_registered():
    assert set(spaces.registered_methods()) >= REQUIRED


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        spaces.register("lora", peft_type="LORA")(lambda trial, ctx: {})


def test_target_sets_for_bert_and_llama():
    sets, mlp = resolve_target_sets(BERT)
    assert sets["attention"] == ["attention.output.dense", "key", "query", "value"]
    assert sets["attention+mlp"] == ["intermediate.dense", "key", "output.dense", "query", "value"]
    assert mlp["attention+mlp"] == ["intermediate.dense", "output.dense"]
    sets, _ = resolve_target_sets(LLAMA)
    assert sets["attention"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert "lm_head" not in sets["all-linear"]


def test_minimal_suffixes_select_exactly_the_wanted_modules():
    wanted = [m for m in BERT if m.endswith("attention.output.dense")]
    suffixes = minimal_suffixes(wanted, BERT)
    hit = [m for m in BERT if any(m == s or m.endswith("." + s) for s in suffixes)]
    assert sorted(hit) == sorted(wanted)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_sampled_configs_are_valid_peft_configs(sampler):
    spec = SpaceSpec(
        methods=tuple(sorted(REQUIRED)),
        quantization=("none", "int8", "nf4", "fp4"),
        learning_rate=(1e-4, 1e-2),
    )
    space = DefineByRun(spec, _ctx())
    make = optuna.samplers.RandomSampler if sampler == "random" else optuna.samplers.TPESampler
    study = optuna.create_study(sampler=make(seed=1), directions=["maximize", "minimize"])
    seen = set()
    for i in range(60):
        trial = study.ask()
        out = space(trial)
        assert out["quantization"] in spaces.get_method(out["method"]).quantization
        config = get_peft_config(dict(out["peft_config"]))
        assert config.peft_type.value == spaces.get_method(out["method"]).peft_type
        assert 1e-4 <= out["learning_rate"] <= 1e-2
        seen.add(out["method"])
        study.tell(trial, [float(i % 7), float(i % 5)])
    assert len(seen) >= 8


def test_candidates_are_enqueued_first_and_keep_their_config():
    peft = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["query"]}
    spec = SpaceSpec(
        methods=("ia3",),
        quantization=("none",),
        learning_rate=(1e-3, 1e-3),
        candidates=(Candidate("mine", peft, "nf4", 0.02),),
    )
    study = optuna.create_study()
    enqueue_candidates(study, spec)
    enqueue_candidates(study, spec)  # queued once only
    out = DefineByRun(spec, _ctx())(study.ask())
    assert out == {
        "candidate": "mine",
        "method": "lora",
        "quantization": "nf4",
        "peft_config": peft,
        "learning_rate": 0.02,
        "training": {},  # no TrainingArguments field searched
    }
    # Once run, a candidate is never proposed again while there is a space to sample.
    assert all(DefineByRun(spec, _ctx())(study.ask())["candidate"] == SAMPLED for _ in range(5))


def test_a_candidate_inside_the_space_is_enqueued_with_its_own_parameters():
    from peft_search.search.inputs.candidates import describe_candidates

    ctx = _ctx()
    qlora = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,  # not among the space's dropouts (0.0, 0.1): left out, not rounded
        "target_modules": list(reversed(ctx.target_sets["attention"])),  # another spelling of the same set
    }
    ia3 = {"peft_type": "IA3", "task_type": "SEQ_CLS", "target_modules": ["key"], "feedforward_modules": []}
    spec = SpaceSpec(
        methods=("lora", "vera"),
        quantization=("none", "nf4"),
        learning_rate=(1e-4, 1e-2),
        candidates=(Candidate("qlora", qlora, "nf4", 3e-3), Candidate("ia3", ia3, "none", 3e-3)),
    )
    space = describe_candidates(DefineByRun(spec, ctx))
    assert space.spec.candidates[0].params == {
        "method": "lora",
        "lora.quantization": "nf4",
        "learning_rate": 3e-3,
        "lora.r": 8,
        "lora.alpha_ratio": 2.0,
        "lora.targets": "attention",
        "lora.layers": "all",
        "lora.use_dora": False,
        "lora.use_rslora": False,
    }
    assert space.spec.candidates[1].params == {}  # IA3 is not in space.methods: nothing to describe it with

    study = optuna.create_study(directions=["maximize", "minimize"])
    enqueue_candidates(study, space.spec)
    first, second = study.ask(), study.ask()
    assert space(first)["peft_config"] == qlora  # the candidate's own config, as written
    assert space(second)["peft_config"] == ia3
    assert first.params == {"candidate": "qlora", **space.spec.candidates[0].params}
    assert second.params == {"candidate": "ia3"}
    study.tell(first, [0.9, 1e5])
    study.tell(second, [0.8, 1e3])
    # The sampled trials share the candidate's distributions, so one search space holds them all.
    sampled = study.ask()
    space(sampled)
    for name, dist in study.trials[0].distributions.items():
        if name in sampled.distributions:
            assert sampled.distributions[name] == dist


def test_spaces_package_imports_neither_torch_nor_ray():
    import subprocess
    import sys

    code = (
        "import sys, spaces, reports, reports.html, reports.best, reports.charts, reports.fronts;"
        "print('torch' in sys.modules, 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

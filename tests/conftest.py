"""Shared fixtures: tiny models built from config (never downloaded), small synthetic datasets, local Ray."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path

import pytest

from tests import under_xdist
from tests.tiny import FILLER as FILLER  # re-exported: tests import the vocabulary from here
from tests.tiny import WORDS, make_text, topics_csv, word_tokenizer
from tests.tiny import tiny_bert as build_tiny_bert

# Object-store tests run against a local S3 stand-in (moto); Ray's workers inherit these from the first test on.
# Real credentials a developer has set win; no lookups of cloud instance metadata.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)
# What searches measure once per machine and cache (the CPU runtime baseline, the threads and heap measurements,
# packing's speedup) goes to this test session's own directory, for the tests and the Ray workers they start, never
# to the user's cache. pytest-xdist's workers share one (their run's id names it): a figure one worker measured, the
# other reads (tests that must measure afresh set their own).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
    os.environ["PEFT_SEARCH_CACHE"] = os.path.join(tempfile.gettempdir(), f"peft-search-cache-{_RUN}")
    os.makedirs(os.environ["PEFT_SEARCH_CACHE"], exist_ok=True)
else:
    os.environ["PEFT_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="peft-search-cache-")

# The tiny model and data builders live in tests/tiny.py (the chaos benchmark builds the same search); tests
# import WORDS, FILLER, make_text and _tokenizer from here.
_tokenizer = word_tokenizer


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT (hidden size 32) with random weights, saved like a model directory."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def bert_without_dropout(tiny_bert, tmp_path_factory):
    """``tiny_bert`` with every dropout at 0: runs that split rows differently (workers, accumulation) compare
    exactly, since dropout masks depend on how rows are split."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    shutil.copytree(tiny_bert, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 2-layer Llama (hidden size 32) with random weights, saved like a model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = _tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=4,
        bos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def classification_csv(tmp_path_factory):
    """3 topics x 40 short texts; the topic is learnable from its keywords."""
    return topics_csv(tmp_path_factory.mktemp("data") / "topics.csv", per_class=40)


@pytest.fixture(scope="session")
def qa_jsonl(tmp_path_factory):
    """Prompt/answer pairs: name the topic of a short text."""
    import pandas as pd

    rng = random.Random(1)
    rows = [{"prompt": make_text(lab, rng) + " topic :", "answer": lab} for lab in WORDS for _ in range(30)]
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return str(path)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance sized for this machine; everything it started is killed afterwards."""
    import psutil

    from peft_search.cluster import connect, shutdown

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    resources = connect(num_cpus=2, object_store_memory=256 * 1024**2)
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    yield resources
    shutdown()
    for proc in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(started, timeout=10)


CANDIDATES = [
    {
        "name": "lora-qv",
        "learning_rate": 0.01,
        "peft_config": {
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "r": 2,
            "target_modules": ["query", "value"],
        },
    },
    # 80 soft-prompt tokens overflow the tiny model's 64 positions: this trial fails in its first forward pass.
    {
        "name": "breaks",
        "peft_config": {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 80},
    },
    # Only the task head, which PEFT trains whole (modules_to_save) and so never adapts: PEFT refuses it at
    # injection and the trial is recorded as infeasible, not as a crash. (A name that matches no module at all is
    # a config error caught before Ray starts; see tests/search/test_bad_input.py.)
    {
        "name": "no-such-layer",
        "peft_config": {
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "r": 2,
            "target_modules": ["classifier"],
        },
    },
]


@pytest.fixture(scope="session")
def small_search(ray_local, tiny_bert, classification_csv, tmp_path_factory):
    """A real search on local Ray with tiny BERT: 5 trials, one failing on purpose, one infeasible."""
    from peft_search.search.loop.driver import run_search
    from tests.helpers import tiny_config

    results = tmp_path_factory.mktemp("results")
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(results),
        space={"methods": ["ia3", "bitfit"], "candidates": CANDIDATES},
        search={"num_trials": 5, "sampler": "tpe", "seed": 0, "max_concurrent": 2},
        training={"max_steps": 3},
        resources={"cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    return cfg, Path(search_dir)


def pytest_collection_modifyitems(config, items):
    import torch

    # Marked ``last`` after the rest (a stable sort: the others keep their order). Under pytest-xdist (CI's slow
    # lane, ``-n 2``) the long chaos run goes first instead: it takes a worker of its own from the start while the
    # other worker runs the rest.
    if under_xdist():
        items.sort(key=lambda item: item.get_closest_marker("long") is None)
    else:
        items.sort(key=lambda item: item.get_closest_marker("last") is not None)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

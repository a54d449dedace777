"""What the search reads from a model's config alone (``search.inputs.modeling.model_facts``)."""

from __future__ import annotations

import pytest
from transformers import BertConfig, GPT2Config

from peft_search.search.errors import ConfigError
from peft_search.search.inputs.candidates import check_ranks
from peft_search.search.inputs.modeling import meta_model, model_facts


def test_widest_rank_is_the_largest_min_in_out_of_any_weight_matrix(tmp_path):
    """BERT's layers are ``nn.Linear``; GPT-2's attention and MLP are transformers' ``Conv1D`` (weights stored
    in x out), and its one ``nn.Linear`` is the 2-class head, which alone would bound every rank at 2."""
    bert = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    gpt2 = GPT2Config(n_embd=24, n_layer=2, n_head=2, vocab_size=100, n_positions=64)
    for config, widest in ((bert, 32), (gpt2, 24)):
        path = tmp_path / config.model_type
        config.save_pretrained(path)
        facts = model_facts(meta_model(str(path), "sequence-classification", 2, None))
        assert facts.widest_rank == widest, config.model_type
        check_ranks([4, widest], facts.widest_rank)
        with pytest.raises(ConfigError, match=rf"^space\.ranks: {widest + 1} is more .* up to {widest}$"):
            check_ranks([4, widest + 1], facts.widest_rank)

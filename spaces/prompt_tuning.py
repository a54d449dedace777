"""Prompt tuning: trainable soft-prompt embeddings prepended to the input (Lester et al. 2021)."""

from peft_search.spaces.common import base, suggest_virtual_tokens
from peft_search.spaces.registry import register


@register("prompt_tuning", peft_type="PROMPT_TUNING", description="Soft prompt embeddings at the input")
def sample_prompt_tuning(trial, ctx):
    return {
        **base(ctx, "PROMPT_TUNING"),
        "num_virtual_tokens": suggest_virtual_tokens(trial, ctx, "prompt_tuning"),
    }

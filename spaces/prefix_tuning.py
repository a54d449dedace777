"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang 2021)."""

from peft_search.spaces.common import base, suggest_virtual_tokens
from peft_search.spaces.registry import register


@register("prefix_tuning", peft_type="PREFIX_TUNING", description="Trainable past key/values per layer")
def sample_prefix_tuning(trial, ctx):
    return {
        **base(ctx, "PREFIX_TUNING"),
        "num_virtual_tokens": suggest_virtual_tokens(trial, ctx, "prefix_tuning"),
        "prefix_projection": trial.suggest_categorical("prefix_tuning.prefix_projection", [False, True]),
    }

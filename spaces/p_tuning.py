"""P-tuning: soft prompts produced by a small trainable prompt encoder (Liu et al. 2021)."""

from peft_search.spaces.common import base, suggest_virtual_tokens
from peft_search.spaces.registry import register


@register("p_tuning", peft_type="P_TUNING", description="Soft prompts from an MLP / LSTM prompt encoder")
def sample_p_tuning(trial, ctx):
    return {
        **base(ctx, "P_TUNING"),
        "num_virtual_tokens": suggest_virtual_tokens(trial, ctx, "p_tuning"),
        "encoder_reparameterization_type": trial.suggest_categorical("p_tuning.encoder", ["MLP", "LSTM"]),
        "encoder_hidden_size": int(trial.suggest_categorical("p_tuning.encoder_hidden_size", [64, 128])),
    }

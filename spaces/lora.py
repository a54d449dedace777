"""LoRA, with DoRA and rsLoRA as sampled switches (Hu et al. 2021; Liu et al. 2024; Kalajdzievski 2023)."""

from peft_search.spaces.common import (
    base,
    suggest_alpha,
    suggest_dropout,
    suggest_layers,
    suggest_rank,
    suggest_targets,
)
from peft_search.spaces.registry import register


@register("lora", peft_type="LORA", description="Low-rank adapters; DoRA and rsLoRA as switches")
def sample_lora(trial, ctx):
    r = suggest_rank(trial, ctx, "lora")
    _, targets = suggest_targets(trial, ctx, "lora")
    return {
        **base(ctx, "LORA"),
        "r": r,
        "lora_alpha": suggest_alpha(trial, ctx, "lora", r),
        "lora_dropout": suggest_dropout(trial, ctx, "lora"),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "lora"),
        # DoRA's weight norm breaks bitsandbytes 8-bit layers after an optimizer step (bnb 0.50, CPU): not offered.
        "use_dora": ctx.quantization != "int8" and trial.suggest_categorical("lora.use_dora", [False, True]),
        "use_rslora": trial.suggest_categorical("lora.use_rslora", [False, True]),
    }

"""AdaLoRA: LoRA whose rank budget is reallocated across layers during training (Zhang et al. 2023)."""

from peft_search.spaces.common import (
    base,
    suggest_alpha,
    suggest_dropout,
    suggest_layers,
    suggest_rank,
    suggest_targets,
)
from peft_search.spaces.registry import register


@register("adalora", peft_type="ADALORA", description="Adaptive rank allocation by SVD-style pruning")
def sample_adalora(trial, ctx):
    init_r = suggest_rank(trial, ctx, "adalora")
    _, targets = suggest_targets(trial, ctx, "adalora")
    total = max(ctx.total_steps, 4)
    # The schedule needs a budgeting phase: warm up for 10% of steps, freeze ranks for the last 20%.
    tinit, tfinal = max(total // 10, 0), max(total // 5, 1)
    return {
        **base(ctx, "ADALORA"),
        "init_r": init_r,
        "target_r": max(init_r // 2, 1),
        "lora_alpha": suggest_alpha(trial, ctx, "adalora", init_r),
        "lora_dropout": suggest_dropout(trial, ctx, "adalora"),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "adalora"),
        "total_step": total,
        "tinit": tinit,
        "tfinal": tfinal,
        "deltaT": max((total - tinit - tfinal) // 4, 1),
    }

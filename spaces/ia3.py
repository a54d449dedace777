"""IA3: learned rescaling vectors on keys, values and feed-forward activations (Liu et al. 2022)."""

from peft_search.spaces.common import base, suggest_targets
from peft_search.spaces.registry import register


@register("ia3", peft_type="IA3", description="Learned rescaling of activations; no rank")
def sample_ia3(trial, ctx):
    name, targets = suggest_targets(trial, ctx, "ia3")
    return {
        **base(ctx, "IA3"),
        "target_modules": targets,
        "feedforward_modules": list(ctx.mlp_targets.get(name, [])),
    }

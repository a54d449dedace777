"""VeRA: frozen shared random projections with trainable scaling vectors (Kopiczko et al. 2024)."""

from peft_search.spaces.common import base, suggest_dropout, suggest_layers, suggest_targets
from peft_search.spaces.registry import register


@register("vera", peft_type="VERA", description="Shared frozen random matrices, trainable per-layer vectors")
def sample_vera(trial, ctx):
    # VeRA's rank is the width of the shared projection: it is cheap, so the paper uses far larger values.
    r = int(trial.suggest_categorical("vera.r", [max(int(r) * 16, 32) for r in ctx.ranks]))
    _, targets = suggest_targets(trial, ctx, "vera")
    return {
        **base(ctx, "VERA"),
        "r": r,
        "vera_dropout": suggest_dropout(trial, ctx, "vera"),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "vera"),
        # Save the projections with the adapter so it loads without relying on the PRNG key.
        "save_projection": True,
    }
